//! A linear layer with optional low-rank (LoRA) branches: `y = x Wᵀ + b + Σ s·(x Aᵀ) Bᵀ`.
//!
//! Base weights are plain tensors (never trained); each LoRA branch holds `A [r, in]` and
//! `B [out, r]`, which the trainer swaps for `Var`s. `B` starts at zero so a freshly added
//! branch is present and inert. Several branches may be active at once: a sub-structure
//! (d, r) adds its vertical adapter V_d and its horizontal adapter H_r.

use candle_core::{Device, Tensor};

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl LoraBranch {
    /// A branch of rank `rank` with `A` small random and `B` zero (the LoRA paper's
    /// initialisation), scaled by `alpha / rank`.
    pub fn new_inert(
        in_dim: usize,
        out_dim: usize,
        rank: usize,
        alpha: f64,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = Tensor::rand(-bound as f32, bound as f32, (rank, in_dim), device)?;
        let b = Tensor::zeros((out_dim, rank), candle_core::DType::F32, device)?;
        Ok(LoraBranch {
            a,
            b,
            scale: alpha / rank as f64,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, as checkpoints store it.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Vec<LoraBranch>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            lora: Vec::new(),
        }
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dim(1).unwrap_or(0)
    }

    /// `x`: `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.broadcast_matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        for branch in &self.lora {
            let low = x.broadcast_matmul(&branch.a.t()?)?;
            let delta = low.broadcast_matmul(&branch.b.t()?)?;
            y = (y + (delta * branch.scale)?)?;
        }
        Ok(y)
    }
}
