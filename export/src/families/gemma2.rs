//! Gemma2 as an ONNX graph; mirrors `trainer::families::gemma2`: embeddings scaled by
//! sqrt(hidden), RMSNorm as `x̂ · (1 + w)`, norms before and after attention and MLP,
//! attention and final logit soft-capping, sliding window on even layers, tanh GELU.

use models::families::gemma2::Gemma2Config;

use super::bert::gelu;
use super::llama::{apply_rope, gqa_attention, rms_norm, rope_tables};
use super::{GraphFamily, Inputs};
use crate::blocks::{merge_heads, scoring_attention, split_heads, Layout, ScoringPosition};
use crate::error::Result;
use crate::graph::GraphBuilder;
use crate::weights::ModelWeights;

pub struct Gemma2Graph {
    pub config: Gemma2Config,
}

impl Gemma2Graph {
    fn inv_freq(&self) -> Vec<f32> {
        let dim = self.config.head_dim;
        (0..dim / 2)
            .map(|i| (1.0 / self.config.rope_theta.powf((2 * i) as f64 / dim as f64)) as f32)
            .collect()
    }

    /// Gemma's norm scale `1 + w`, stored shifted so every session shares it.
    fn norm(&self, g: &mut GraphBuilder, w: &ModelWeights, x: &str, name: &str) -> Result<String> {
        let scale = w.shared_mapped(g, name, &format!("{name}+1"), |v| v + 1.0)?;
        Ok(rms_norm(g, x, &scale, self.config.rms_norm_eps))
    }
}

impl GraphFamily for Gemma2Graph {
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn scoring(&self) -> ScoringPosition {
        ScoringPosition::LastReal
    }
    fn has_token_types(&self) -> bool {
        false
    }

    /// Global mask, sliding-window mask, cos, sin.
    fn prepare(&self, g: &mut GraphBuilder, layout: &Layout) -> Result<Vec<String>> {
        let global = layout.causal_mask(g, None);
        let sliding = match self.config.sliding_window {
            Some(w) => layout.causal_mask(g, Some(w)),
            None => global.clone(),
        };
        let (cos, sin) = rope_tables(g, &self.inv_freq(), layout);
        Ok(vec![global, sliding, cos, sin])
    }

    fn embed(&self, g: &mut GraphBuilder, w: &ModelWeights, inputs: &Inputs) -> Result<String> {
        let table = w.shared(g, "model.embed_tokens.weight")?;
        let x = g.gather(&table, &inputs.input_ids, 0);
        // transformers rounds the normalizer to the activation dtype (f32).
        let s = g.scalar_f32((self.config.hidden_size as f32).sqrt());
        Ok(g.mul(&x, &s))
    }

    fn layer(
        &self,
        g: &mut GraphBuilder,
        w: &ModelWeights,
        index: usize,
        hidden: &str,
        layout: &Layout,
        prepared: &[String],
        want_attention: bool,
    ) -> Result<(String, Option<String>)> {
        let c = &self.config;
        let (heads, kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let p = format!("model.layers.{index}");
        let mask = if c.is_sliding_layer(index) {
            &prepared[1]
        } else {
            &prepared[0]
        };
        let (cos, sin) = (&prepared[2], &prepared[3]);
        let x = self.norm(g, w, hidden, &format!("{p}.input_layernorm.weight"))?;
        let q = w.projection(g, index, "q", &format!("{p}.self_attn.q_proj"), false)?;
        let k = w.projection(g, index, "k", &format!("{p}.self_attn.k_proj"), false)?;
        let v = w.projection(g, index, "v", &format!("{p}.self_attn.v_proj"), false)?;
        let q = q.apply(g, &x);
        let q = split_heads(g, &q, heads, hd, false);
        let q = apply_rope(g, &q, cos, sin, hd);
        let k = k.apply(g, &x);
        let k = split_heads(g, &k, kv, hd, false);
        let k = apply_rope(g, &k, cos, sin, hd);
        let k_t = g.transpose(&k, &[0, 1, 3, 2]);
        let v = v.apply(g, &x);
        let v = split_heads(g, &v, kv, hd, false);
        let scale = c.query_pre_attn_scalar.powf(-0.5) as f32;
        let (ctx, probs) = gqa_attention(
            g,
            &q,
            &k_t,
            &v,
            mask,
            scale,
            heads,
            kv,
            hd,
            c.attn_logit_softcapping,
        );
        let attn = want_attention.then(|| scoring_attention(g, &probs, layout));
        let ctx = merge_heads(g, &ctx, heads * hd);
        let o = w.projection(g, index, "o", &format!("{p}.self_attn.o_proj"), false)?;
        let attended = o.apply(g, &ctx);
        let attended = self.norm(
            g,
            w,
            &attended,
            &format!("{p}.post_attention_layernorm.weight"),
        )?;
        let h = g.add(hidden, &attended);
        let x = self.norm(g, w, &h, &format!("{p}.pre_feedforward_layernorm.weight"))?;
        let gate = w.projection(g, index, "gate", &format!("{p}.mlp.gate_proj"), false)?;
        let up = w.projection(g, index, "up", &format!("{p}.mlp.up_proj"), false)?;
        let down = w.projection(g, index, "down", &format!("{p}.mlp.down_proj"), false)?;
        let gx = gate.apply(g, &x);
        let act = gelu(g, &gx, false);
        let ux = up.apply(g, &x);
        let prod = g.mul(&act, &ux);
        let mlp = down.apply(g, &prod);
        let mlp = self.norm(
            g,
            w,
            &mlp,
            &format!("{p}.post_feedforward_layernorm.weight"),
        )?;
        Ok((g.add(&h, &mlp), attn))
    }

    fn pre_readout(&self, g: &mut GraphBuilder, w: &ModelWeights, hidden: &str) -> Result<String> {
        self.norm(g, w, hidden, "model.norm.weight")
    }

    fn transform_score(&self, g: &mut GraphBuilder, score: &str) -> String {
        match self.config.final_logit_softcapping {
            Some(cap) => {
                let cv = g.scalar_f32(cap as f32);
                let scaled = g.div(score, &cv);
                let t = g.unary("Tanh", &scaled);
                g.mul(&t, &cv)
            }
            None => score.to_string(),
        }
    }
}
