//! Llama-family decoders (Llama 2/3, Mistral, Qwen2); mirrors `transformers`'
//! `LlamaForCausalLM`: pre-norm blocks with RMSNorm, rotary positions (with the llama3
//! or linear scaling of `rope_scaling`), grouped-query attention, SwiGLU MLP. The score
//! is read after the final norm at each row's last real token.

use candle_core::{Device, Tensor};
use models::families::llama::LlamaConfig;
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

pub struct LlamaLayer {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    input_norm: Tensor,
    post_attention_norm: Tensor,
}

pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Tensor,
    pub layers: Vec<LlamaLayer>,
    final_norm: Tensor,
    inv_freq: Vec<f32>,
    device: Device,
}

/// Rotary inverse frequencies with `rope_scaling` applied, as transformers'
/// `ROPE_INIT_FUNCTIONS` computes them for the types supported here.
pub fn rope_inv_freq(config: &LlamaConfig) -> std::result::Result<Vec<f32>, String> {
    let dim = config.head_dim();
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    let Some(scaling) = &config.rope_scaling else {
        return Ok(base.iter().map(|&f| f as f32).collect());
    };
    let factor = scaling.factor.unwrap_or(1.0);
    let freqs = match scaling.rope_type.as_str() {
        "default" => base,
        "linear" => base.iter().map(|f| f / factor).collect(),
        // Dynamic NTK only changes frequencies past max_position_embeddings, which pair
        // encoding never reaches (max_length is far below it).
        "dynamic" => base,
        "llama3" => {
            let low = scaling.low_freq_factor.unwrap_or(1.0);
            let high = scaling.high_freq_factor.unwrap_or(4.0);
            let old = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        other => {
            return Err(format!(
                "rope_scaling type {other:?} is not supported (default, linear, dynamic, llama3)"
            ))
        }
    };
    Ok(freqs.iter().map(|&f| f as f32).collect())
}

impl Llama {
    pub fn load(checkpoint: &Checkpoint, config: &LlamaConfig, device: &Device) -> Result<Self> {
        let config_path = checkpoint.dir.join("config.json");
        if config.hidden_act != "silu" {
            return Err(TrainerError::Input(format!(
                "{}: hidden_act {:?} is not supported for llama-family models (silu)",
                config_path.display(),
                config.hidden_act
            )));
        }
        let inv_freq = rope_inv_freq(config)
            .map_err(|m| TrainerError::Input(format!("{}: {m}", config_path.display())))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(LlamaLayer {
                    q_proj: linear(
                        checkpoint,
                        &format!("{p}.self_attn.q_proj"),
                        config.qkv_bias(),
                        device,
                    )?,
                    k_proj: linear(
                        checkpoint,
                        &format!("{p}.self_attn.k_proj"),
                        config.qkv_bias(),
                        device,
                    )?,
                    v_proj: linear(
                        checkpoint,
                        &format!("{p}.self_attn.v_proj"),
                        config.qkv_bias(),
                        device,
                    )?,
                    o_proj: linear(
                        checkpoint,
                        &format!("{p}.self_attn.o_proj"),
                        config.o_bias(),
                        device,
                    )?,
                    gate_proj: linear(checkpoint, &format!("{p}.mlp.gate_proj"), false, device)?,
                    up_proj: linear(checkpoint, &format!("{p}.mlp.up_proj"), false, device)?,
                    down_proj: linear(checkpoint, &format!("{p}.mlp.down_proj"), false, device)?,
                    input_norm: tensor(checkpoint, &format!("{p}.input_layernorm.weight"), device)?,
                    post_attention_norm: tensor(
                        checkpoint,
                        &format!("{p}.post_attention_layernorm.weight"),
                        device,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Llama {
            config: config.clone(),
            embed_tokens: tensor(checkpoint, "model.embed_tokens.weight", device)?,
            layers,
            final_norm: tensor(checkpoint, "model.norm.weight", device)?,
            inv_freq,
            device: device.clone(),
        })
    }
}

impl Backbone for Llama {
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
        Ok(self
            .embed_tokens
            .index_select(&input.input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))?)
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
        let (heads, kv_heads, head_dim) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let x = rms_norm(hidden, &l.input_norm, c.rms_norm_eps)?;
        // Rows are left-aligned after every merge, so positions are 0..T for every row.
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
        let mask = causal_mask(
            &layout.lengths,
            layout.seq_len,
            c.effective_sliding_window(),
            &self.device,
        )?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(&mask)?;
        let probs = softmax_last(&scores)?;
        let attention = if want_attention {
            Some(scoring_attention(&probs, &layout.score_pos)?)
        } else {
            None
        };
        let attended = l.o_proj.forward(&merge_heads(&probs.matmul(&v)?)?)?;
        let h = (hidden + attended)?;
        let x = rms_norm(&h, &l.post_attention_norm, c.rms_norm_eps)?;
        let mlp = l
            .down_proj
            .forward(&(l.gate_proj.forward(&x)?.silu()? * l.up_proj.forward(&x)?)?)?;
        Ok(((h + mlp)?, attention))
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
}

impl LoraTargets for LlamaLayer {
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
