//! Gemma 2 decoders (Gemma Team, 2024); mirrors `transformers`' `Gemma2ForCausalLM`:
//! embeddings scaled by sqrt(hidden), RMSNorm as `x̂ · (1 + w)`, norms before and after
//! both attention and MLP, GeGLU (tanh GELU), queries scaled by
//! `query_pre_attn_scalar^-0.5`, attention logits soft-capped, a sliding window on even
//! layers, and the final logit soft-capping applied to the relevance score (as the
//! released lightweight Gemma2 re-ranker does).

use candle_core::{Device, Tensor};
use models::families::Gemma2Config;
use models::Checkpoint;

use super::{linear, tensor, LoraTargets};
use crate::error::{Result, TrainerError};
use crate::forward::{Backbone, ModelInput, Readout};
use crate::layers::{
    apply_rope, causal_mask, merge_heads, repeat_kv, rms_norm, rope_tables, scoring_attention,
    softmax_last, split_heads,
};
use crate::linear::Linear;
use crate::merge::RowLayout;

pub struct Gemma2Layer {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// Norm scales stored as `1 + weight`.
    input_norm: Tensor,
    post_attention_norm: Tensor,
    pre_feedforward_norm: Tensor,
    post_feedforward_norm: Tensor,
}

pub struct Gemma2 {
    config: Gemma2Config,
    embed_tokens: Tensor,
    pub layers: Vec<Gemma2Layer>,
    final_norm: Tensor,
    inv_freq: Vec<f32>,
    device: Device,
}

fn gemma_norm(checkpoint: &Checkpoint, name: &str, device: &Device) -> Result<Tensor> {
    Ok((tensor(checkpoint, name, device)? + 1.0)?)
}

impl Gemma2 {
    pub fn load(checkpoint: &Checkpoint, config: &Gemma2Config, device: &Device) -> Result<Self> {
        if !matches!(
            config.hidden_activation.as_str(),
            "gelu_pytorch_tanh" | "gelu"
        ) {
            return Err(TrainerError::Input(format!(
                "{}: hidden_activation {:?} is not supported for gemma2 (gelu_pytorch_tanh)",
                checkpoint.dir.join("config.json").display(),
                config.hidden_activation
            )));
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Gemma2Layer {
                    q_proj: linear(checkpoint, &format!("{p}.self_attn.q_proj"), false, device)?,
                    k_proj: linear(checkpoint, &format!("{p}.self_attn.k_proj"), false, device)?,
                    v_proj: linear(checkpoint, &format!("{p}.self_attn.v_proj"), false, device)?,
                    o_proj: linear(checkpoint, &format!("{p}.self_attn.o_proj"), false, device)?,
                    gate_proj: linear(checkpoint, &format!("{p}.mlp.gate_proj"), false, device)?,
                    up_proj: linear(checkpoint, &format!("{p}.mlp.up_proj"), false, device)?,
                    down_proj: linear(checkpoint, &format!("{p}.mlp.down_proj"), false, device)?,
                    input_norm: gemma_norm(
                        checkpoint,
                        &format!("{p}.input_layernorm.weight"),
                        device,
                    )?,
                    post_attention_norm: gemma_norm(
                        checkpoint,
                        &format!("{p}.post_attention_layernorm.weight"),
                        device,
                    )?,
                    pre_feedforward_norm: gemma_norm(
                        checkpoint,
                        &format!("{p}.pre_feedforward_layernorm.weight"),
                        device,
                    )?,
                    post_feedforward_norm: gemma_norm(
                        checkpoint,
                        &format!("{p}.post_feedforward_layernorm.weight"),
                        device,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dim = config.head_dim;
        let inv_freq = (0..dim / 2)
            .map(|i| (1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64)) as f32)
            .collect();
        Ok(Gemma2 {
            config: config.clone(),
            embed_tokens: tensor(checkpoint, "model.embed_tokens.weight", device)?,
            layers,
            final_norm: gemma_norm(checkpoint, "model.norm.weight", device)?,
            inv_freq,
            device: device.clone(),
        })
    }
}

fn soft_cap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(((x / cap)?.tanh()? * cap)?)
}

impl Backbone for Gemma2 {
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, input: &ModelInput) -> Result<Tensor> {
        let (b, t) = input.input_ids.dims2()?;
        let h = self.config.hidden_size;
        let x = self
            .embed_tokens
            .index_select(&input.input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        // transformers rounds the normalizer to the activation dtype (f32 here).
        Ok((x * ((h as f32).sqrt() as f64))?)
    }

    fn layer(
        &self,
        index: usize,
        hidden: &Tensor,
        layout: &RowLayout,
        want_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let l = &self.layers[index];
        let c = &self.config;
        let (heads, kv_heads, head_dim) =
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let x = rms_norm(hidden, &l.input_norm, c.rms_norm_eps)?;
        let (cos, sin) = rope_tables(&self.inv_freq, layout.seq_len, &self.device)?;
        let q = apply_rope(
            &split_heads(&l.q_proj.forward(&x)?, heads, head_dim)?,
            &cos,
            &sin,
        )?;
        let k = apply_rope(
            &split_heads(&l.k_proj.forward(&x)?, kv_heads, head_dim)?,
            &cos,
            &sin,
        )?;
        let v = split_heads(&l.v_proj.forward(&x)?, kv_heads, head_dim)?;
        let (k, v) = (
            repeat_kv(&k, heads / kv_heads)?,
            repeat_kv(&v, heads / kv_heads)?,
        );
        let mut scores = (q.matmul(&k.t()?)? * c.query_pre_attn_scalar.powf(-0.5))?;
        if let Some(cap) = c.attn_logit_softcapping {
            scores = soft_cap(&scores, cap)?;
        }
        let window = if c.is_sliding_layer(index) {
            c.sliding_window
        } else {
            None
        };
        let mask = causal_mask(&layout.lengths, layout.seq_len, window, &self.device)?;
        let probs = softmax_last(&scores.broadcast_add(&mask)?)?;
        let attention = if want_attention {
            Some(scoring_attention(&probs, &layout.score_pos)?)
        } else {
            None
        };
        let attended = l.o_proj.forward(&merge_heads(&probs.matmul(&v)?)?)?;
        let h = (hidden + rms_norm(&attended, &l.post_attention_norm, c.rms_norm_eps)?)?;
        let x = rms_norm(&h, &l.pre_feedforward_norm, c.rms_norm_eps)?;
        let mlp = l
            .down_proj
            .forward(&(l.gate_proj.forward(&x)?.gelu()? * l.up_proj.forward(&x)?)?)?;
        let out = (h + rms_norm(&mlp, &l.post_feedforward_norm, c.rms_norm_eps)?)?;
        Ok((out, attention))
    }

    fn projections_mut(&mut self) -> Vec<(usize, &'static str, &mut Linear)> {
        super::layer_projections(&mut self.layers)
    }

    fn readout(
        &self,
        hidden: &Tensor,
        layout: &RowLayout,
        readout: Readout,
        query_weights: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        let normed = rms_norm(hidden, &self.final_norm, self.config.rms_norm_eps)?;
        readout.features(&normed, layout, query_weights)
    }

    fn transform_score(&self, score: Tensor) -> Result<Tensor> {
        match self.config.final_logit_softcapping {
            Some(cap) => soft_cap(&score, cap),
            None => Ok(score),
        }
    }
}

impl LoraTargets for Gemma2Layer {
    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("q", &mut self.q_proj),
            ("k", &mut self.k_proj),
            ("v", &mut self.v_proj),
            ("o", &mut self.o_proj),
            ("gate", &mut self.gate_proj),
            ("up", &mut self.up_proj),
            ("down", &mut self.down_proj),
        ]
    }
}
