//! Graph pieces every family shares: the row layout as graph values, attention masks,
//! width merging, readouts and LoRA-carrying projections. Each mirrors a function of
//! the trainer's candle forward (named in its comment) so parity is checkable piece by
//! piece.

use crate::graph::{GraphBuilder, MASKED};
use crate::onnx::AttributeProto;
use trainer::Readout;

/// Where a family reads its score (and takes its merge weights from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringPosition {
    /// BERT's `[CLS]`, position 0.
    First,
    /// Decoders: the last real token, `length - 1`.
    LastReal,
}

/// The trainer's `RowLayout` as graph values: `[B]` int64 lengths and spans (end
/// exclusive) and the padded length `T` as an int64 scalar.
#[derive(Debug, Clone)]
pub struct Layout {
    pub lengths: String,
    pub passage_start: String,
    pub passage_end: String,
    pub query_start: String,
    pub query_end: String,
    pub seq_len: String,
    pub scoring: ScoringPosition,
}

impl Layout {
    /// `[B]` int64 scoring positions.
    pub fn score_pos(&self, g: &mut GraphBuilder) -> String {
        match self.scoring {
            ScoringPosition::First => {
                let zero = g.scalar_i64(0);
                g.mul(&self.lengths, &zero)
            }
            ScoringPosition::LastReal => {
                let one = g.scalar_i64(1);
                g.sub(&self.lengths, &one)
            }
        }
    }

    /// `[1, T]` int64 positions `0..T`.
    pub fn positions(&self, g: &mut GraphBuilder) -> String {
        let r = g.range(&self.seq_len);
        g.unsqueeze(&r, &[0])
    }

    /// `[B, T]` bool: position is a real token.
    pub fn real_tokens(&self, g: &mut GraphBuilder) -> String {
        let pos = self.positions(g);
        let len = g.unsqueeze(&self.lengths, &[1]);
        g.less(&pos, &len)
    }

    /// Additive padding mask `[B, 1, 1, T]` (trainer: `padding_mask`).
    pub fn padding_mask(&self, g: &mut GraphBuilder) -> String {
        let real = self.real_tokens(g);
        let hidden = g.not(&real);
        let hidden = g.to_f32(&hidden);
        let masked = g.scalar_f32(MASKED);
        let add = g.mul(&hidden, &masked);
        g.unsqueeze(&add, &[1, 2])
    }

    /// Additive causal mask `[B, 1, T, T]` with padding and an optional sliding window
    /// (trainer: `causal_mask`): key j is hidden from query i when j > i, j ≥ length,
    /// or j ≤ i − window.
    pub fn causal_mask(&self, g: &mut GraphBuilder, window: Option<usize>) -> String {
        let r = g.range(&self.seq_len);
        let keys = g.unsqueeze(&r, &[0]); // [1, T]  (j)
        let queries = g.unsqueeze(&r, &[1]); // [T, 1]  (i)
        let future = g.op("Greater", &[&keys, &queries], vec![]); // [T, T]
        let mut hidden = g.unsqueeze(&future, &[0]); // [1, T, T]
        let len = g.unsqueeze(&self.lengths, &[1, 2]); // [B, 1, 1]
        let keys3 = g.unsqueeze(&keys, &[0]); // [1, 1, T]
        let not_less = g.less(&keys3, &len);
        let padding = g.not(&not_less); // [B, 1, T]
        hidden = g.op("Or", &[&hidden, &padding], vec![]); // [B, T, T]
        if let Some(w) = window {
            let wv = g.scalar_i64(w as i64);
            let limit = g.sub(&queries, &wv); // [T, 1]: i - w
            let too_far = g.op("LessOrEqual", &[&keys, &limit], vec![]); // [T, T]
            let too_far = g.unsqueeze(&too_far, &[0]);
            hidden = g.op("Or", &[&hidden, &too_far], vec![]);
        }
        let hidden = g.to_f32(&hidden);
        let masked = g.scalar_f32(MASKED);
        let add = g.mul(&hidden, &masked);
        g.unsqueeze(&add, &[1])
    }
}

/// Attention of each row's scoring position summed over heads, `[B, H, T, T]` →
/// `[B, T]` (trainer: `scoring_attention`).
pub fn scoring_attention(g: &mut GraphBuilder, probs: &str, layout: &Layout) -> String {
    let summed = g.reduce_sum(probs, &[1], false); // [B, T, T]
    match layout.scoring {
        ScoringPosition::First => {
            let zero = g.scalar_i64(0);
            g.gather(&summed, &zero, 1)
        }
        ScoringPosition::LastReal => {
            let pos = layout.score_pos(g);
            let select = one_hot_rows(g, &pos, layout); // [B, 1, T]
            let row = g.matmul(&select, &summed); // [B, 1, T]
            g.squeeze(&row, &[1])
        }
    }
}

/// `[B, 1, T]` float one-hot of one position per row.
fn one_hot_rows(g: &mut GraphBuilder, pos: &str, layout: &Layout) -> String {
    let positions = layout.positions(g); // [1, T]
    let p = g.unsqueeze(pos, &[1]); // [B, 1]
    let hit = g.equal(&positions, &p); // [B, T]
    let hit = g.to_f32(&hit);
    g.unsqueeze(&hit, &[1])
}

/// `[B, 1, T]` weights averaging positions `start..end` of each row (an empty span
/// gives zeros), trainer: `span_mean`.
pub fn span_weights(g: &mut GraphBuilder, start: &str, end: &str, layout: &Layout) -> String {
    let inside = span_inside(g, start, end, layout);
    let inside = g.to_f32(&inside); // [B, T]
    let len = g.sub(end, start);
    let one = g.scalar_i64(1);
    let len = g.max(&len, &one);
    let len = g.to_f32(&len);
    let len = g.unsqueeze(&len, &[1]);
    let w = g.div(&inside, &len);
    g.unsqueeze(&w, &[1])
}

/// The graph names of one depth's idf weighting (trainer: `idf::QueryIdf`).
pub struct QueryIdfWeights {
    /// `[V]` ln idf of every token id.
    pub log_idf: String,
    /// `[1]` the head's exponent α.
    pub power: String,
}

/// Span weights `[B, 1, T]` reweighed by idf: token t of the span weighs idf(t)^α,
/// normalised to sum 1 per row (trainer: the weighted mean of `max_sim`). `ids` are the
/// input ids `[B, T0]` of the rows `layout` describes: merging shrinks only the passage,
/// which comes after the query, so the first `T ≤ T0` input positions still hold the
/// query tokens at their layout positions. A row with an empty span keeps zero weights.
pub fn idf_span_weights(
    g: &mut GraphBuilder,
    span_weights: &str,
    ids: &str,
    layout: &Layout,
    idf: &QueryIdfWeights,
) -> String {
    let starts = g.const_i64(&[0]);
    let ends = g.unsqueeze(&layout.seq_len, &[0]);
    let axes = g.const_i64(&[1]);
    let ids = g.op("Slice", &[ids, &starts, &ends, &axes], vec![]); // [B, T]
    let log_idf = g.gather(&idf.log_idf, &ids, 0); // [B, T]
    let scaled = g.mul(&log_idf, &idf.power);
    let token_weights = g.unary("Exp", &scaled);
    let token_weights = g.unsqueeze(&token_weights, &[1]); // [B, 1, T]
    let w = g.mul(span_weights, &token_weights);
    let sum = g.reduce_sum(&w, &[-1], true);
    let tiny = g.scalar_f32(1e-30);
    let sum = g.max(&sum, &tiny);
    g.div(&w, &sum)
}

/// `[B, T]` bool: position lies in `start..end` of its row.
fn span_inside(g: &mut GraphBuilder, start: &str, end: &str, layout: &Layout) -> String {
    let positions = layout.positions(g);
    let s = g.unsqueeze(start, &[1]);
    let e = g.unsqueeze(end, &[1]);
    let before = g.less(&positions, &s);
    let after_start = g.not(&before);
    let before_end = g.less(&positions, &e);
    g.and(&after_start, &before_end)
}

/// Late interaction (trainer: `max_sim`) → `[B, H]`. `query` `[B, Tq, H]` is read with
/// `query_weights` `[B, 1, Tq]` (a span mean), `passage` `[B, Tp, H]` over positions
/// `p_start..p_end` of `p_layout`. Each normalised query token is multiplied by the
/// normalised passage token of highest cosine (`ArgMax`, first of equal maxima, as
/// candle's), picked with a one-hot matmul. A row without passage tokens reads zeros.
pub fn max_sim(
    g: &mut GraphBuilder,
    query: &str,
    query_weights: &str,
    passage: &str,
    p_start: &str,
    p_end: &str,
    p_layout: &Layout,
) -> String {
    let q = normalize(g, query);
    let p = normalize(g, passage);
    let p_t = g.transpose(&p, &[0, 2, 1]); // [B, H, Tp]
    let sim = g.matmul(&q, &p_t); // [B, Tq, Tp]
    let inside = span_inside(g, p_start, p_end, p_layout); // [B, Tp]
    let outside = g.not(&inside);
    let outside = g.to_f32(&outside);
    let masked = g.scalar_f32(MASKED);
    let penalty = g.mul(&outside, &masked);
    let penalty = g.unsqueeze(&penalty, &[1]); // [B, 1, Tp]
    let sim = g.add(&sim, &penalty);
    let best = g.op(
        "ArgMax",
        &[&sim],
        vec![
            AttributeProto::int("axis", -1),
            AttributeProto::int("keepdims", 1),
        ],
    ); // [B, Tq, 1]
    let positions = p_layout.positions(g); // [1, Tp]
    let positions = g.unsqueeze(&positions, &[0]); // [1, 1, Tp]
    let pick = g.equal(&best, &positions);
    let pick = g.to_f32(&pick); // [B, Tq, Tp]
    let matched = g.matmul(&pick, &p); // [B, Tq, H]
    let products = g.mul(&q, &matched);
    let features = g.matmul(query_weights, &products); // [B, 1, H]
    let features = g.squeeze(&features, &[1]);
    let len = g.sub(p_end, p_start);
    let zero = g.scalar_i64(0);
    let any = g.op("Greater", &[&len, &zero], vec![]);
    let any = g.to_f32(&any);
    let any = g.unsqueeze(&any, &[1]); // [B, 1]
    g.mul(&features, &any)
}

/// L2-normalises the last axis (trainer: `normalize`).
fn normalize(g: &mut GraphBuilder, x: &str) -> String {
    let sq = g.mul(x, x);
    let sum = g.reduce_sum(&sq, &[-1], true);
    let norm = g.unary("Sqrt", &sum);
    let eps = g.scalar_f32(1e-12);
    let norm = g.add(&norm, &eps);
    g.div(x, &norm)
}

/// The L2-normalised mean of positions `start..end` of each row, `[B, T, H]` → `[B, H]`
/// (trainer: `normalize(span_mean(..))`).
pub fn span_vector(
    g: &mut GraphBuilder,
    hidden: &str,
    start: &str,
    end: &str,
    layout: &Layout,
) -> String {
    let w = span_weights(g, start, end, layout);
    let v = g.matmul(&w, hidden);
    let v = g.squeeze(&v, &[1]);
    normalize(g, &v)
}

/// The readouts of the trainer's `Readout`: `[B, T, H]` → `[B, H]`.
/// `query_idf`: the depth's idf weighting and the `[B, T]` input ids, for max-sim.
pub fn read_features(
    g: &mut GraphBuilder,
    hidden: &str,
    layout: &Layout,
    readout: Readout,
    query_idf: Option<(&QueryIdfWeights, &str)>,
) -> String {
    match readout {
        Readout::SpanProduct => {
            let q = span_vector(g, hidden, &layout.query_start, &layout.query_end, layout);
            let p = span_vector(
                g,
                hidden,
                &layout.passage_start,
                &layout.passage_end,
                layout,
            );
            g.mul(&q, &p)
        }
        Readout::MaxSim => {
            let mut query_weights = span_weights(g, &layout.query_start, &layout.query_end, layout);
            if let Some((idf, ids)) = query_idf {
                query_weights = idf_span_weights(g, &query_weights, ids, layout, idf);
            }
            max_sim(
                g,
                hidden,
                &query_weights,
                hidden,
                &layout.passage_start,
                &layout.passage_end,
                layout,
            )
        }
        Readout::Mean => {
            let zero = g.scalar_i64(0);
            let starts = g.mul(&layout.lengths, &zero);
            let w = span_weights(g, &starts, &layout.lengths, layout);
            let m = g.matmul(&w, hidden);
            g.squeeze(&m, &[1])
        }
        Readout::ScoringPosition => match layout.scoring {
            ScoringPosition::First => {
                let zero = g.scalar_i64(0);
                g.gather(hidden, &zero, 1)
            }
            ScoringPosition::LastReal => {
                let pos = layout.score_pos(g);
                let select = one_hot_rows(g, &pos, layout);
                let row = g.matmul(&select, hidden);
                g.squeeze(&row, &[1])
            }
        },
    }
}

/// Width merging before a compress layer (trainer: `plan_merge` + `apply_merge`), built
/// from index arithmetic so it works for any batch and length: token i of a row moves
/// to new position n(i) = i before the passage, start + (i − start) / ratio inside it,
/// i − removed after it; the `[B, T', T]` merge matrix holds each token's weight
/// normalised within its new position (a group whose weights are all zero falls back
/// to the plain mean). `weights` is `[B, T]`, or `None` for uniform merging.
pub fn merge(
    g: &mut GraphBuilder,
    hidden: &str,
    layout: &Layout,
    weights: Option<&str>,
    ratio: usize,
) -> Merged {
    let r = g.scalar_i64(ratio as i64);
    let plen = g.sub(&layout.passage_end, &layout.passage_start); // [B]
    let rm1 = g.scalar_i64(ratio as i64 - 1);
    let padded = g.add(&plen, &rm1);
    let groups = g.div(&padded, &r); // ceil(plen / ratio)
    let removed = g.sub(&plen, &groups);
    let new_len = g.sub(&layout.lengths, &removed);
    let new_end = g.add(&layout.passage_start, &groups);

    let i = layout.positions(g); // [1, T]
    let ps = g.unsqueeze(&layout.passage_start, &[1]); // [B, 1]
    let pe = g.unsqueeze(&layout.passage_end, &[1]);
    let rem = g.unsqueeze(&removed, &[1]);
    let offset = g.sub(&i, &ps); // [B, T]
    let group = g.div(&offset, &r);
    let inside_pos = g.add(&ps, &group);
    let after_pos = g.sub(&i, &rem);
    let in_passage_or_after = {
        let before = g.less(&i, &ps);
        g.not(&before)
    };
    let before_end = g.less(&i, &pe);
    let in_passage = g.and(&in_passage_or_after, &before_end);
    let tail = g.where_(&before_end, &inside_pos, &after_pos);
    let target = g.where_(&in_passage_or_after, &tail, &i); // [B, T]
    let real = layout.real_tokens(g); // [B, T]

    // Token weights: the attention weight inside the passage, 1 elsewhere.
    let ones = g.to_f32(&real);
    let token_w = match weights {
        Some(w) => {
            let w = g.mul(w, &ones);
            g.where_(&in_passage, &w, &ones)
        }
        None => ones.clone(),
    };

    let new_t = g.reduce_max(&new_len, false);
    let j = g.range(&new_t); // [T']
    let j = g.unsqueeze(&j, &[0, 2]); // [1, T', 1]
    let target3 = g.unsqueeze(&target, &[1]); // [B, 1, T]
    let hit = g.equal(&target3, &j); // [B, T', T]
    let real3 = g.unsqueeze(&real, &[1]);
    let hit = g.and(&hit, &real3);
    let hit = g.to_f32(&hit);
    let w3 = g.unsqueeze(&token_w, &[1]);
    let raw = g.mul(&hit, &w3);
    let total = g.reduce_sum(&raw, &[2], true); // [B, T', 1]
    let count = g.reduce_sum(&hit, &[2], true);
    let zero_f = g.scalar_f32(0.0);
    let one_f = g.scalar_f32(1.0);
    let has_weight = g.op("Greater", &[&total, &zero_f], vec![]);
    let safe_total = g.where_(&has_weight, &total, &one_f);
    let weighted = g.div(&raw, &safe_total);
    let safe_count = g.max(&count, &one_f);
    let mean = g.div(&hit, &safe_count);
    let matrix = g.where_(&has_weight, &weighted, &mean);
    let merged = g.matmul(&matrix, hidden);
    Merged {
        hidden: merged,
        layout: Layout {
            lengths: new_len,
            passage_start: layout.passage_start.clone(),
            passage_end: new_end,
            query_start: layout.query_start.clone(),
            query_end: layout.query_end.clone(),
            seq_len: new_t,
            scoring: layout.scoring,
        },
        matrix,
    }
}

/// What `merge` produces: the merged states, their layout and the `[B, T', T]` matrix.
pub struct Merged {
    pub hidden: String,
    pub layout: Layout,
    pub matrix: String,
}

impl Merged {
    /// Per-token weights `[B, T]` carried through the merge, `[B, T']` (trainer:
    /// `MergePlan::carry`): each new position gets the merge-weighted mean of its
    /// tokens' weights.
    pub fn carry(&self, g: &mut GraphBuilder, weights: &str) -> String {
        let w = g.unsqueeze(weights, &[2]); // [B, T, 1]
        let carried = g.matmul(&self.matrix, &w);
        g.squeeze(&carried, &[2])
    }
}

/// idf(t)^β of every position, `[B, T]` (trainer: `QueryIdf::merge_weights`): the
/// weights of idf merging. `log_idf` `[V]`, `beta` `[1]`.
pub fn idf_token_weights(g: &mut GraphBuilder, ids: &str, log_idf: &str, beta: &str) -> String {
    let l = g.gather(log_idf, ids, 0);
    let scaled = g.mul(&l, beta);
    g.unary("Exp", &scaled)
}

/// A projection `y = x Wᵀ (+ b) (+ x Aᵀ (s Bᵀ))`, weights already laid out `[in, out]`.
pub struct Projection {
    pub weight: ProjectionWeight,
    pub bias: Option<String>,
    /// `Aᵀ [in, R]` and `s·Bᵀ [R, out]` of every active LoRA branch, concatenated.
    pub lora: Option<(String, String)>,
}

/// The base weight of a projection, `[in, out]`.
pub enum ProjectionWeight {
    F32(String),
    /// Symmetric int8 per output column: `W ≈ q · scale[out]` (`quantize_columns`).
    Int8 {
        weight: String,
        scale: String,
    },
}

impl ProjectionWeight {
    /// `x W`: a plain MatMul, or ONNX Runtime's DynamicQuantizeMatMul, which quantizes
    /// `x` per call (uint8, its own range) and runs the integer GEMM.
    pub fn matmul(&self, g: &mut GraphBuilder, x: &str) -> String {
        match self {
            ProjectionWeight::F32(w) => g.matmul(x, w),
            ProjectionWeight::Int8 { weight, scale } => {
                g.contrib_op("DynamicQuantizeMatMul", &[x, weight, scale], vec![])
            }
        }
    }
}

impl Projection {
    pub fn apply(&self, g: &mut GraphBuilder, x: &str) -> String {
        let y = self.apply_without_bias(g, x);
        match &self.bias {
            Some(b) => g.add(&y, b),
            None => y,
        }
    }

    /// `x Wᵀ` plus the LoRA branches, leaving the bias to a fused consumer
    /// (SkipLayerNormalization, BiasGelu).
    pub fn apply_without_bias(&self, g: &mut GraphBuilder, x: &str) -> String {
        let mut y = self.weight.matmul(g, x);
        if let Some((a, b)) = &self.lora {
            // Low-rank branches stay f32: a rank-R product costs little next to W.
            let low = g.matmul(x, a);
            let delta = g.matmul(&low, b);
            y = g.add(&y, &delta);
        }
        y
    }
}

/// Symmetric int8 quantization of a `[rows, cols]` row-major matrix per column:
/// `scale[c] = max|w[., c]| / 127`, `q = round(w / scale)` in `-127..=127` (the
/// symmetric range keeps `-q` representable; an all-zero column gets scale 1).
pub fn quantize_columns(values: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scale = vec![0f32; cols];
    for r in 0..rows {
        for (c, s) in scale.iter_mut().enumerate() {
            *s = s.max(values[r * cols + c].abs());
        }
    }
    for s in scale.iter_mut() {
        *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
    }
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scale[i % cols]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// `[B, T, H*D]` → `[B, heads, T, D]` (or `[B, heads, D, T]` when `transpose_last`).
pub fn split_heads(
    g: &mut GraphBuilder,
    x: &str,
    heads: usize,
    head_dim: usize,
    transpose_last: bool,
) -> String {
    let r = g.reshape(x, &[0, 0, heads as i64, head_dim as i64]);
    if transpose_last {
        g.transpose(&r, &[0, 2, 3, 1])
    } else {
        g.transpose(&r, &[0, 2, 1, 3])
    }
}

/// `[B, heads, T, D]` → `[B, T, heads*D]`.
pub fn merge_heads(g: &mut GraphBuilder, x: &str, hidden: usize) -> String {
    let t = g.transpose(x, &[0, 2, 1, 3]);
    g.reshape(&t, &[0, 0, hidden as i64])
}

/// Graph inputs → the initial layout. Spans are `[B, 2]` int64 (start, end exclusive).
pub fn layout_from_inputs(
    g: &mut GraphBuilder,
    input_ids: &str,
    attention_mask: &str,
    passage_span: &str,
    query_span: Option<&str>,
    scoring: ScoringPosition,
) -> Layout {
    let lengths = g.reduce_sum(attention_mask, &[1], false);
    let zero = g.scalar_i64(0);
    let one = g.scalar_i64(1);
    let passage_start = g.gather(passage_span, &zero, 1);
    let passage_end = g.gather(passage_span, &one, 1);
    let (query_start, query_end) = match query_span {
        Some(q) => (g.gather(q, &zero, 1), g.gather(q, &one, 1)),
        None => (passage_start.clone(), passage_start.clone()),
    };
    let seq_len = g.dim(input_ids, 1);
    Layout {
        lengths,
        passage_start,
        passage_end,
        query_start,
        query_end,
        seq_len,
        scoring,
    }
}
