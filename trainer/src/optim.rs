//! AdamW over candle `Var`s with inspectable state, so a checkpoint can store the
//! moments and `--resume` continues bit-for-bit (candle-nn's AdamW keeps them private).

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::Result;

pub struct ParamGroup {
    pub vars: Vec<Var>,
    pub lr: f64,
}

pub struct AdamW {
    pub groups: Vec<ParamGroup>,
    /// First and second moments, one pair per var in group order.
    pub moments: Vec<(Tensor, Tensor)>,
    pub step: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>) -> Result<Self> {
        let moments = groups
            .iter()
            .flat_map(|g| g.vars.iter())
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            groups,
            moments,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        })
    }

    /// One update; `lr_scale` multiplies every group's rate (warm-up and decay).
    pub fn step(&mut self, grads: &GradStore, lr_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        let mut k = 0;
        for group in &self.groups {
            let lr = group.lr * lr_scale;
            for var in &group.vars {
                let (m, v) = &mut self.moments[k];
                k += 1;
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                *m = ((&*m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
                *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
                let m_hat = (&*m / c1)?;
                let v_hat = (&*v / c2)?;
                let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
                let decayed = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
                var.set(&(decayed - (update * lr)?)?)?;
            }
        }
        Ok(())
    }
}
