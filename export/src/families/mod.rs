//! ONNX graphs of each model family, one file per family, mirroring the trainer's candle
//! implementation of the same family line by line.

pub mod bert;
pub mod gemma2;
pub mod llama;

use crate::blocks::{Layout, ScoringPosition};
use crate::error::Result;
use crate::graph::GraphBuilder;
use crate::weights::ModelWeights;

/// The graph inputs of a family (token types only exist for BERT).
pub struct Inputs {
    pub input_ids: String,
    /// BERT token types; `None` (or a family with isolated segments) embeds type 0.
    pub token_type_ids: Option<String>,
}

/// What a family implements; `crate::forward::build` drives it like the trainer's
/// `forward()` drives a `Backbone`.
pub trait GraphFamily {
    fn num_layers(&self) -> usize;
    fn scoring(&self) -> ScoringPosition;
    fn has_token_types(&self) -> bool;
    /// Per-layout values every layer needs (masks, rotary tables); rebuilt after merges.
    fn prepare(&self, g: &mut GraphBuilder, layout: &Layout) -> Result<Vec<String>>;
    fn embed(&self, g: &mut GraphBuilder, w: &ModelWeights, inputs: &Inputs) -> Result<String>;
    /// Layer `index` (0-based); returns the scoring position's attention summed over
    /// heads (`[B, T]`) when `want_attention`.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        g: &mut GraphBuilder,
        w: &ModelWeights,
        index: usize,
        hidden: &str,
        layout: &Layout,
        prepared: &[String],
        want_attention: bool,
    ) -> Result<(String, Option<String>)>;
    /// Hidden states before the readout (decoders apply the final norm).
    fn pre_readout(
        &self,
        _g: &mut GraphBuilder,
        _w: &ModelWeights,
        hidden: &str,
    ) -> Result<String> {
        Ok(hidden.to_string())
    }
    /// Final transform of a head's logit (Gemma2's soft-capping).
    fn transform_score(&self, _g: &mut GraphBuilder, score: &str) -> String {
        score.to_string()
    }
}

/// Scaled dot-product attention with an additive mask; `q`: `[B, h, T, D]`, `k_t`:
/// `[B, h, D, T]`, `v`: `[B, h, T, D]`. Returns the context and the probabilities.
pub fn attention(
    g: &mut GraphBuilder,
    q: &str,
    k_t: &str,
    v: &str,
    mask: &str,
    scale: f32,
) -> (String, String) {
    let s = g.matmul(q, k_t);
    let c = g.scalar_f32(scale);
    let s = g.mul(&s, &c);
    let s = g.add(&s, mask);
    let probs = g.softmax(&s);
    let context = g.matmul(&probs, v);
    (context, probs)
}
