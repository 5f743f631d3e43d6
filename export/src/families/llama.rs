//! Llama, Mistral and Qwen2 as ONNX graphs; mirrors `trainer::families::llama`
//! (RMSNorm, rotary positions, grouped-query attention, SwiGLU). The decoder pieces
//! here are shared with Gemma2.

use models::families::llama::LlamaConfig;
use trainer::families::llama::rope_inv_freq;

use super::{GraphFamily, Inputs};
use crate::blocks::{merge_heads, scoring_attention, split_heads, Layout, ScoringPosition};
use crate::error::{ExportError, Result};
use crate::graph::GraphBuilder;
use crate::weights::ModelWeights;

pub struct LlamaGraph {
    pub config: LlamaConfig,
    pub inv_freq: Vec<f32>,
}

impl LlamaGraph {
    pub fn new(config: &LlamaConfig) -> Result<Self> {
        let inv_freq = rope_inv_freq(config).map_err(ExportError::Input)?;
        Ok(LlamaGraph {
            config: config.clone(),
            inv_freq,
        })
    }
}

/// `x / sqrt(mean(x²) + eps) * scale` over the last axis (trainer: `rms_norm`).
pub fn rms_norm(g: &mut GraphBuilder, x: &str, scale: &str, eps: f64) -> String {
    let sq = g.mul(x, x);
    let ms = g.reduce_mean(&sq, &[-1]);
    let e = g.scalar_f32(eps as f32);
    let ms = g.add(&ms, &e);
    let rms = g.unary("Sqrt", &ms);
    let normed = g.div(x, &rms);
    g.mul(&normed, scale)
}

/// Rotary tables `cos, sin: [T, D]` for positions `0..T` (trainer: `rope_tables`),
/// computed in the graph from the inverse frequencies: merged rows are renumbered
/// contiguously, so positions are always `0..T`.
pub fn rope_tables(g: &mut GraphBuilder, inv_freq: &[f32], layout: &Layout) -> (String, String) {
    let pos = g.range(&layout.seq_len);
    let pos = g.to_f32(&pos);
    let pos = g.unsqueeze(&pos, &[1]); // [T, 1]
    let mut doubled = inv_freq.to_vec();
    doubled.extend_from_slice(inv_freq);
    let freq = g.inline_weight(
        &format!("rope_inv_freq_{}", doubled.len()),
        &[1, doubled.len()],
        &doubled,
    );
    let angles = g.mul(&pos, &freq); // [T, D]
    (g.unary("Cos", &angles), g.unary("Sin", &angles))
}

/// `x·cos + rotate_half(x)·sin` on `[B, h, T, D]` (trainer: `apply_rope`).
pub fn apply_rope(g: &mut GraphBuilder, x: &str, cos: &str, sin: &str, head_dim: usize) -> String {
    let half = (head_dim / 2) as i64;
    let axis = g.const_i64(&[-1]);
    let s0 = g.const_i64(&[0]);
    let s1 = g.const_i64(&[half]);
    let s2 = g.const_i64(&[head_dim as i64]);
    let x1 = g.op("Slice", &[x, &s0, &s1, &axis], vec![]);
    let x2 = g.op("Slice", &[x, &s1, &s2, &axis], vec![]);
    let neg = g.unary("Neg", &x2);
    let rotated = g.op(
        "Concat",
        &[&neg, &x1],
        vec![crate::onnx::AttributeProto::int("axis", -1)],
    );
    let a = g.mul(x, cos);
    let b = g.mul(&rotated, sin);
    g.add(&a, &b)
}

/// Grouped-query attention without copying key/value heads: query heads are grouped by
/// the key/value head they share (`[B, kv, rep·T, D]`), so one MatMul serves a group.
/// `q`: `[B, heads, T, D]`, `k_t`: `[B, kv, D, T]`, `v`: `[B, kv, T, D]`.
#[allow(clippy::too_many_arguments)]
pub fn gqa_attention(
    g: &mut GraphBuilder,
    q: &str,
    k_t: &str,
    v: &str,
    mask: &str,
    scale: f32,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    soft_cap: Option<f64>,
) -> (String, String) {
    let grouped_q = g.reshape(q, &[0, kv_heads as i64, -1, head_dim as i64]);
    let s = g.matmul(&grouped_q, k_t); // [B, kv, rep·T, T]
    let s = g.reshape(&s, &[0, heads as i64, -1, 0]);
    let c = g.scalar_f32(scale);
    let mut s = g.mul(&s, &c);
    if let Some(cap) = soft_cap {
        let cv = g.scalar_f32(cap as f32);
        let scaled = g.div(&s, &cv);
        let t = g.unary("Tanh", &scaled);
        s = g.mul(&t, &cv);
    }
    let s = g.add(&s, mask);
    let probs = g.softmax(&s); // [B, heads, T, T]
    let grouped_p = g.reshape(&probs, &[0, kv_heads as i64, -1, 0]);
    let ctx = g.matmul(&grouped_p, v); // [B, kv, rep·T, D]
    let ctx = g.reshape(&ctx, &[0, heads as i64, -1, head_dim as i64]);
    (ctx, probs)
}

impl GraphFamily for LlamaGraph {
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn scoring(&self) -> ScoringPosition {
        ScoringPosition::LastReal
    }
    fn has_token_types(&self) -> bool {
        false
    }

    fn prepare(&self, g: &mut GraphBuilder, layout: &Layout) -> Result<Vec<String>> {
        let mask = layout.causal_mask(g, self.config.effective_sliding_window());
        let (cos, sin) = rope_tables(g, &self.inv_freq, layout);
        Ok(vec![mask, cos, sin])
    }

    fn embed(&self, g: &mut GraphBuilder, w: &ModelWeights, inputs: &Inputs) -> Result<String> {
        let table = w.shared(g, "model.embed_tokens.weight")?;
        Ok(g.gather(&table, &inputs.input_ids, 0))
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
        let (heads, kv, hd) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let p = format!("model.layers.{index}");
        let (mask, cos, sin) = (&prepared[0], &prepared[1], &prepared[2]);
        let norm = w.shared(g, &format!("{p}.input_layernorm.weight"))?;
        let x = rms_norm(g, hidden, &norm, c.rms_norm_eps);
        let qkv_bias = c.qkv_bias();
        let q = w.projection(g, index, "q", &format!("{p}.self_attn.q_proj"), qkv_bias)?;
        let k = w.projection(g, index, "k", &format!("{p}.self_attn.k_proj"), qkv_bias)?;
        let v = w.projection(g, index, "v", &format!("{p}.self_attn.v_proj"), qkv_bias)?;
        let q = q.apply(g, &x);
        let q = split_heads(g, &q, heads, hd, false);
        let q = apply_rope(g, &q, cos, sin, hd);
        let k = k.apply(g, &x);
        let k = split_heads(g, &k, kv, hd, false);
        let k = apply_rope(g, &k, cos, sin, hd);
        let k_t = g.transpose(&k, &[0, 1, 3, 2]);
        let v = v.apply(g, &x);
        let v = split_heads(g, &v, kv, hd, false);
        let scale = 1.0 / (hd as f32).sqrt();
        let (ctx, probs) = gqa_attention(g, &q, &k_t, &v, mask, scale, heads, kv, hd, None);
        let attn = want_attention.then(|| scoring_attention(g, &probs, layout));
        let ctx = merge_heads(g, &ctx, heads * hd);
        let o = w.projection(g, index, "o", &format!("{p}.self_attn.o_proj"), c.o_bias())?;
        let attended = o.apply(g, &ctx);
        let h = g.add(hidden, &attended);
        let norm = w.shared(g, &format!("{p}.post_attention_layernorm.weight"))?;
        let x = rms_norm(g, &h, &norm, c.rms_norm_eps);
        let gate = w.projection(g, index, "gate", &format!("{p}.mlp.gate_proj"), false)?;
        let up = w.projection(g, index, "up", &format!("{p}.mlp.up_proj"), false)?;
        let down = w.projection(g, index, "down", &format!("{p}.mlp.down_proj"), false)?;
        let gx = gate.apply(g, &x);
        let sig = g.unary("Sigmoid", &gx);
        let silu = g.mul(&gx, &sig);
        let ux = up.apply(g, &x);
        let prod = g.mul(&silu, &ux);
        let mlp = down.apply(g, &prod);
        Ok((g.add(&h, &mlp), attn))
    }

    fn pre_readout(&self, g: &mut GraphBuilder, w: &ModelWeights, hidden: &str) -> Result<String> {
        let norm = w.shared(g, "model.norm.weight")?;
        Ok(rms_norm(g, hidden, &norm, self.config.rms_norm_eps))
    }
}
