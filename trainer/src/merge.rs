//! Width: importance-weighted token merging (the Matryoshka paper's width compression).
//!
//! Before a compress layer runs, each row's passage tokens are split into consecutive
//! groups of `ratio` (the last group may be shorter) and each group is replaced by the
//! weighted mean of its hidden states. A token's weight is the attention the row's
//! scoring position paid to it in the layer just run, summed over heads; `Uniform` mode
//! uses equal weights, `Idf` mode each token's idf raised to a fixed power. Tokens before and after the passage are kept; rows stay
//! left-aligned and right-padded, so positions stay contiguous from 0.
//!
//! The merge is a linear map per row, so it is applied as one batched matmul with a
//! `[B, T', T]` matrix built here on the host; gradients flow to the hidden states.

use candle_core::{Device, Tensor};
use models::Span;

use crate::error::Result;

/// How merge weights are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeMode {
    /// Attention of the scoring position, summed over heads (the paper's choice).
    #[default]
    Attention,
    /// Plain mean (checkpoints trained that way, e.g. the released Gemma2 lightweight).
    Uniform,
    /// idf(t)^β of each token (`idf::QueryIdf::merge_weights`). With isolated segments
    /// no scoring position attends to the passage, so attention gives no weights; a
    /// group's rare word is what max-sim can still match after the merge, and a plain
    /// mean dilutes it with its stop-word neighbours.
    Idf,
}

/// Per-row layout of a batch as it flows through the layers.
#[derive(Debug, Clone, PartialEq)]
pub struct RowLayout {
    pub seq_len: usize,
    pub lengths: Vec<usize>,
    /// Query tokens: never merged, and before the passage, so merging never moves them.
    pub query: Vec<Span>,
    pub passage: Vec<Span>,
    pub score_pos: Vec<usize>,
}

/// The merge of one batch: the `[B, T', T]` matrix (row-major) and the layout after it.
#[derive(Debug, Clone)]
pub struct MergePlan {
    pub matrix: Vec<f32>,
    pub layout: RowLayout,
}

impl MergePlan {
    /// Per-token weights `[B, T]` (row-major) carried through the merge, `[B, T']`: each
    /// new position gets the merge-weighted mean of its tokens' weights, so a later merge
    /// of the same rows weighs merged positions consistently.
    pub fn carry(&self, weights: &[f32]) -> Vec<f32> {
        let batch = self.layout.lengths.len();
        let new_t = self.layout.seq_len;
        let t = weights.len() / batch.max(1);
        let mut out = vec![0f32; batch * new_t];
        for b in 0..batch {
            for o in 0..new_t {
                let row = &self.matrix[(b * new_t + o) * t..(b * new_t + o + 1) * t];
                out[b * new_t + o] = row
                    .iter()
                    .zip(&weights[b * t..(b + 1) * t])
                    .map(|(m, w)| m * w)
                    .sum();
            }
        }
        out
    }
}

/// Plans the merge. `weights` is `[B, T]` row-major (ignored in `Uniform` mode).
pub fn plan_merge(layout: &RowLayout, weights: &[f32], ratio: usize, mode: MergeMode) -> MergePlan {
    let batch = layout.lengths.len();
    let t = layout.seq_len;
    let ratio = ratio.max(1);
    let new_lengths: Vec<usize> = (0..batch)
        .map(|b| layout.lengths[b] - layout.passage[b].len + layout.passage[b].len.div_ceil(ratio))
        .collect();
    let new_t = new_lengths.iter().copied().max().unwrap_or(0);
    let mut matrix = vec![0f32; batch * new_t * t];
    let mut passage = Vec::with_capacity(batch);
    let mut score_pos = Vec::with_capacity(batch);
    for b in 0..batch {
        let span = layout.passage[b];
        let removed = span.len - span.len.div_ceil(ratio);
        let at = |out: usize, inp: usize| (b * new_t + out) * t + inp;
        // Tokens before the passage.
        for i in 0..span.start {
            matrix[at(i, i)] = 1.0;
        }
        // Passage groups.
        for (g, group_start) in (span.start..span.end()).step_by(ratio).enumerate() {
            let group_end = (group_start + ratio).min(span.end());
            let raw: Vec<f32> = (group_start..group_end)
                .map(|i| match mode {
                    MergeMode::Attention | MergeMode::Idf => weights[b * t + i],
                    MergeMode::Uniform => 1.0,
                })
                .collect();
            let total: f32 = raw.iter().sum();
            for (k, i) in (group_start..group_end).enumerate() {
                // A group the scoring position ignored entirely (all weights 0, only
                // possible for masked tokens) falls back to the plain mean.
                let w = if total > 0.0 {
                    raw[k] / total
                } else {
                    1.0 / raw.len() as f32
                };
                matrix[at(span.start + g, i)] = w;
            }
        }
        // Tokens after the passage shift left by the tokens merged away.
        for i in span.end()..layout.lengths[b] {
            matrix[at(i - removed, i)] = 1.0;
        }
        passage.push(Span {
            start: span.start,
            len: span.len.div_ceil(ratio),
        });
        let p = layout.score_pos[b];
        score_pos.push(if p >= span.end() { p - removed } else { p });
    }
    MergePlan {
        matrix,
        layout: RowLayout {
            seq_len: new_t,
            lengths: new_lengths,
            query: layout.query.clone(),
            passage,
            score_pos,
        },
    }
}

/// Applies a plan to hidden states `[B, T, H]` → `[B, T', H]`.
pub fn apply_merge(plan: &MergePlan, hidden: &Tensor, device: &Device) -> Result<Tensor> {
    let (b, t, _) = hidden.dims3()?;
    let m = Tensor::from_vec(plan.matrix.clone(), (b, plan.layout.seq_len, t), device)?;
    Ok(m.matmul(&hidden.contiguous()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RowLayout {
        RowLayout {
            seq_len: 10,
            lengths: vec![10, 8],
            query: vec![Span { start: 1, len: 1 }; 2],
            passage: vec![Span { start: 2, len: 7 }, Span { start: 2, len: 4 }],
            score_pos: vec![9, 7],
        }
    }

    /// Row 1's passage (positions 2..6) merges by 2 with weights 1, 3 | 1, 1: the first
    /// group's carried weight is (1·1 + 3·3) / 4 = 2.5, the second's 1; tokens outside the
    /// passage keep theirs and padding gets 0.
    #[test]
    fn weights_carry_through_a_merge_as_their_merge_weighted_mean() {
        let l = layout();
        let mut weights = vec![1f32; 20];
        weights[10 + 3] = 3.0;
        weights[10 + 6] = 7.0; // row 1's [SEP] after the passage
        weights[10 + 8] = 5.0; // padding
        let plan = plan_merge(&l, &weights, 2, MergeMode::Idf);
        let carried = plan.carry(&weights);
        let t = plan.layout.seq_len;
        let row1 = &carried[t..2 * t];
        assert!((row1[2] - 2.5).abs() < 1e-6, "{row1:?}");
        assert!((row1[3] - 1.0).abs() < 1e-6, "{row1:?}");
        assert_eq!(row1[4], 7.0, "{row1:?}");
        assert!(row1[plan.layout.lengths[1]..].iter().all(|&w| w == 0.0));
    }

    #[test]
    fn ratio_one_is_identity_on_real_tokens() {
        let l = layout();
        let plan = plan_merge(&l, &[1.0; 20], 1, MergeMode::Attention);
        assert_eq!(plan.layout, l);
        for b in 0..2 {
            for i in 0..l.lengths[b] {
                assert_eq!(plan.matrix[(b * 10 + i) * 10 + i], 1.0);
            }
        }
    }

    #[test]
    fn groups_partial_last_group_and_shifted_suffix() {
        let l = layout();
        let weights: Vec<f32> = (0..20).map(|i| i as f32 + 1.0).collect();
        let plan = plan_merge(&l, &weights, 2, MergeMode::Attention);
        // Row 0: passage 7 → 4 groups, length 10 → 7; row 1: passage 4 → 2, length 8 → 6.
        assert_eq!(plan.layout.lengths, vec![7, 6]);
        assert_eq!(plan.layout.seq_len, 7);
        assert_eq!(plan.layout.passage[0], Span { start: 2, len: 4 });
        assert_eq!(plan.layout.score_pos, vec![6, 5]);
        let m = |b: usize, o: usize, i: usize| plan.matrix[(b * 7 + o) * 10 + i];
        // First group of row 0 merges tokens 2 and 3 with weights 3 and 4.
        assert!((m(0, 2, 2) - 3.0 / 7.0).abs() < 1e-6);
        assert!((m(0, 2, 3) - 4.0 / 7.0).abs() < 1e-6);
        // The partial last group (token 8 alone) keeps its state.
        assert_eq!(m(0, 5, 8), 1.0);
        // The suffix token 9 lands at 6.
        assert_eq!(m(0, 6, 9), 1.0);
        // Every output row of a real token sums to one.
        for b in 0..2 {
            for o in 0..plan.layout.lengths[b] {
                let s: f32 = (0..10).map(|i| m(b, o, i)).sum();
                assert!((s - 1.0).abs() < 1e-6);
            }
        }
    }
}
