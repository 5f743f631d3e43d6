//! BERT as an ONNX graph; mirrors `trainer::families::bert` (post-norm blocks, erf GELU,
//! absolute positions, token types).

use models::families::BertConfig;

use super::{attention, GraphFamily, Inputs};
use crate::blocks::{
    merge_heads, scoring_attention, split_heads, Layout, ProjectionWeight, ScoringPosition,
};
use crate::error::Result;
use crate::graph::GraphBuilder;
use crate::weights::ModelWeights;

pub struct BertGraph {
    pub config: BertConfig,
}

/// GELU: the exact erf form for `gelu`, the tanh approximation otherwise (as transformers).
pub fn gelu(g: &mut GraphBuilder, x: &str, exact: bool) -> String {
    let half = g.scalar_f32(0.5);
    let one = g.scalar_f32(1.0);
    let inner = if exact {
        let c = g.scalar_f32(std::f32::consts::FRAC_1_SQRT_2);
        let scaled = g.mul(x, &c);
        g.unary("Erf", &scaled)
    } else {
        let cube = g.mul(x, x);
        let cube = g.mul(&cube, x);
        let k = g.scalar_f32(0.044715);
        let cube = g.mul(&cube, &k);
        let sum = g.add(x, &cube);
        let c = g.scalar_f32((2.0 / std::f32::consts::PI).sqrt());
        let scaled = g.mul(&sum, &c);
        g.unary("Tanh", &scaled)
    };
    let shifted = g.add(&inner, &one);
    let y = g.mul(x, &shifted);
    g.mul(&y, &half)
}

impl GraphFamily for BertGraph {
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn scoring(&self) -> ScoringPosition {
        ScoringPosition::First
    }
    fn has_token_types(&self) -> bool {
        true
    }

    /// The additive mask of the explicit attention path and the int32 key mask of the
    /// fused one.
    fn prepare(&self, g: &mut GraphBuilder, layout: &Layout) -> Result<Vec<String>> {
        let additive = layout.padding_mask(g);
        let real = layout.real_tokens(g);
        let keys = g.cast(&real, crate::onnx::data_type::INT32);
        // Right-padded rows: the fused Attention takes each row's length (1-D mask
        // index) and skips the padding instead of masking it.
        let lengths = g.cast(&layout.lengths, crate::onnx::data_type::INT32);
        Ok(vec![additive, keys, lengths])
    }

    /// Word, position and token-type embeddings and their LayerNorm as ONNX Runtime's
    /// fused EmbedLayerNormalization (positions are `0..T`).
    fn embed(&self, g: &mut GraphBuilder, w: &ModelWeights, inputs: &Inputs) -> Result<String> {
        let words = w.shared(g, "embeddings.word_embeddings.weight")?;
        let types = w.shared(g, "embeddings.token_type_embeddings.weight")?;
        let positions = w.shared(g, "embeddings.position_embeddings.weight")?;
        let gamma = w.shared(g, "embeddings.LayerNorm.weight")?;
        let beta = w.shared(g, "embeddings.LayerNorm.bias")?;
        let ids = g.cast(&inputs.input_ids, crate::onnx::data_type::INT32);
        let tt = match &inputs.token_type_ids {
            Some(tt) => g.cast(tt, crate::onnx::data_type::INT32),
            // Type 0 throughout (isolated segments; trainer: `Bert::embed`).
            None => {
                let zero = g.scalar_i64(0);
                let zeros = g.mul(&inputs.input_ids, &zero);
                g.cast(&zeros, crate::onnx::data_type::INT32)
            }
        };
        let args = [ids, tt, words, positions, types, gamma, beta];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Its schema requires the mask-index output, unused here.
        let outs = g.contrib_op_outputs(
            "EmbedLayerNormalization",
            &args,
            vec![crate::onnx::AttributeProto::float(
                "epsilon",
                self.config.layer_norm_eps as f32,
            )],
            2,
        );
        Ok(outs[0].clone())
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
        use crate::onnx::AttributeProto;
        let c = &self.config;
        let heads = c.num_attention_heads;
        let head_dim = c.hidden_size / heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let p = format!("encoder.layer.{index}");
        let prefixes = [
            format!("{p}.attention.self.query"),
            format!("{p}.attention.self.key"),
            format!("{p}.attention.self.value"),
        ];
        let packed = if want_attention {
            None
        } else {
            w.packed_qkv(g, index, [&prefixes[0], &prefixes[1], &prefixes[2]])?
        };
        let attention_attrs = || {
            vec![
                AttributeProto::int("num_heads", heads as i64),
                AttributeProto::float("scale", scale),
            ]
        };
        let (context, attn) = if let Some((qkv_w, qkv_b)) = packed {
            // ONNX Runtime's fused attention with the projection folded in: one MatMul
            // for q, k and v, no head transposes, one pass for scale, mask and softmax.
            let context = match qkv_w {
                ProjectionWeight::F32(w) => g.contrib_op(
                    "Attention",
                    &[hidden, &w, &qkv_b, &prepared[2]],
                    attention_attrs(),
                ),
                ProjectionWeight::Int8 { weight, scale } => {
                    // The int8 twin: the input quantized once (uint8, per batch), one
                    // integer GEMM for q, k and v; scores and softmax stay f32.
                    let q = g.op_outputs("DynamicQuantizeLinear", &[hidden], vec![], 3);
                    g.contrib_op(
                        "QAttention",
                        &[&q[0], &weight, &qkv_b, &q[1], &scale, &prepared[2], &q[2]],
                        attention_attrs(),
                    )
                }
            };
            (context, None)
        } else {
            let q = w
                .projection(g, index, "q", &prefixes[0], true)?
                .apply(g, hidden);
            let k = w
                .projection(g, index, "k", &prefixes[1], true)?
                .apply(g, hidden);
            let v = w
                .projection(g, index, "v", &prefixes[2], true)?
                .apply(g, hidden);
            if want_attention {
                // The merge needs the scoring position's attention: explicit attention.
                let q = split_heads(g, &q, heads, head_dim, false);
                let k = split_heads(g, &k, heads, head_dim, true);
                let v = split_heads(g, &v, heads, head_dim, false);
                let (context, probs) = attention(g, &q, &k, &v, &prepared[0], scale);
                let attn = scoring_attention(g, &probs, layout);
                (merge_heads(g, &context, c.hidden_size), Some(attn))
            } else {
                // Branches on q, k or v: separate projections, fused attention.
                let context = g.contrib_op(
                    "MultiHeadAttention",
                    &[&q, &k, &v, "", &prepared[1]],
                    attention_attrs(),
                );
                (context, None)
            }
        };
        let eps = c.layer_norm_eps;
        // LayerNorm(attended + bias + residual) in one fused operator.
        let o = w.projection(g, index, "o", &format!("{p}.attention.output.dense"), true)?;
        let attended = o.apply_without_bias(g, &context);
        let x = skip_norm(
            g,
            w,
            &attended,
            hidden,
            o.bias.as_deref(),
            &format!("{p}.attention.output.LayerNorm"),
            eps,
        )?;
        let up = w.projection(g, index, "up", &format!("{p}.intermediate.dense"), true)?;
        let inner = up.apply_without_bias(g, &x);
        let bias = up.bias.clone().expect("bert projections have biases");
        let act = if c.hidden_act == "gelu" {
            "BiasGelu"
        } else {
            "FastGelu"
        };
        let inner = g.contrib_op(act, &[&inner, &bias], vec![]);
        let down = w.projection(g, index, "down", &format!("{p}.output.dense"), true)?;
        let out = down.apply_without_bias(g, &inner);
        let y = skip_norm(
            g,
            w,
            &out,
            &x,
            down.bias.as_deref(),
            &format!("{p}.output.LayerNorm"),
            eps,
        )?;
        Ok((y, attn))
    }
}

/// `LayerNorm(x + bias + residual)` as two Adds and a standard LayerNormalization, not
/// ONNX Runtime's fused SkipLayerNormalization. Both compute the same (within 4e-6 on
/// the embedded default's full graph), but on this project's CPU (ONNX Runtime 1.31.1)
/// the fused kernel took 73 ms per batch of 100 DL19-sized pairs against 22 ms for the
/// three ops, a quarter of an int8 graph's time (`scripts/profile_graph.py`,
/// docs/BENCHMARKS.md).
fn skip_norm(
    g: &mut GraphBuilder,
    w: &ModelWeights,
    x: &str,
    residual: &str,
    bias: Option<&str>,
    prefix: &str,
    eps: f64,
) -> Result<String> {
    let gamma = w.shared(g, &format!("{prefix}.weight"))?;
    let beta = w.shared(g, &format!("{prefix}.bias"))?;
    let mut sum = g.op("Add", &[x, residual], vec![]);
    if let Some(b) = bias {
        sum = g.op("Add", &[&sum, b], vec![]);
    }
    Ok(g.layer_norm(&sum, &gamma, &beta, eps))
}
