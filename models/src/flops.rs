//! FLOP estimates per (query, passage) pair, used to place sub-structures on the
//! quality/cost frontier. Counts multiply-adds as 2 FLOPs in the matmuls that dominate:
//! q/k/v/o projections, attention scores and weighted sums, and the MLP. Norms,
//! activations, softmax and embedding lookups are left out (well under 1% at these sizes).

use crate::families::Dimensions;
use crate::substructure::SubStructure;

/// Token counts of one encoded pair: everything before the passage (specials, query,
/// template), the passage, and everything after it (final `[SEP]` or the prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairLengths {
    pub prefix: usize,
    pub passage: usize,
    pub suffix: usize,
}

/// Reference lengths for reporting: query 32 and passage 128 tokens, plus the family's
/// template tokens split into before/after the passage.
pub const REFERENCE_QUERY_TOKENS: usize = 32;
pub const REFERENCE_PASSAGE_TOKENS: usize = 128;

/// FLOPs of one transformer layer over `n` tokens.
pub fn layer_flops(d: &Dimensions, n: usize) -> f64 {
    let n = n as f64;
    let h = d.hidden_size as f64;
    let q = (d.num_heads * d.head_dim) as f64;
    let kv = (d.num_kv_heads * d.head_dim) as f64;
    let i = d.intermediate_size as f64;
    let projections = 2.0 * n * h * (q + 2.0 * kv) + 2.0 * n * q * h;
    // Scores (QK^T) and weighted sum (AV), every query against every key.
    let attention = 2.0 * 2.0 * n * n * q;
    let mlp_mats = if d.gated_mlp { 3.0 } else { 2.0 };
    let mlp = 2.0 * n * h * i * mlp_mats;
    projections + attention + mlp
}

/// FLOPs of one pair under a sub-structure: the layers up to its depth, with the passage
/// shrinking by `ratio` (rounded up) at each compress layer, plus the scoring head.
pub fn pair_flops(d: &Dimensions, lengths: PairLengths, s: &SubStructure) -> f64 {
    let mut passage = lengths.passage;
    let mut total = 0.0;
    for layer in 0..s.depth {
        if s.ratio > 1 && s.compress_layers.contains(&layer) {
            passage = passage.div_ceil(s.ratio);
        }
        total += layer_flops(d, lengths.prefix + passage + lengths.suffix);
    }
    total + 2.0 * d.hidden_size as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> Dimensions {
        Dimensions {
            num_layers: 6,
            hidden_size: 384,
            num_heads: 12,
            num_kv_heads: 12,
            head_dim: 32,
            intermediate_size: 1536,
            vocab_size: 30522,
            gated_mlp: false,
        }
    }

    #[test]
    fn layer_flops_by_hand() {
        // n = 10 tokens of MiniLM: projections 4*2*10*384*384, attention 4*10*10*384,
        // MLP 2*2*10*384*1536.
        let expected =
            8.0 * 10.0 * 384.0 * 384.0 + 4.0 * 100.0 * 384.0 + 4.0 * 10.0 * 384.0 * 1536.0;
        assert_eq!(layer_flops(&minilm(), 10), expected);
    }

    #[test]
    fn depth_and_width_cut_cost() {
        let d = minilm();
        let lengths = PairLengths {
            prefix: 34,
            passage: 128,
            suffix: 1,
        };
        let full = pair_flops(&d, lengths, &SubStructure::full(6));
        let half_depth = pair_flops(&d, lengths, &SubStructure::depth_only(3));
        assert!((half_depth / full - 0.5).abs() < 1e-6);
        let merged = SubStructure {
            depth: 6,
            ratio: 4,
            compress_layers: vec![1],
        };
        let m = pair_flops(&d, lengths, &merged);
        let expected = layer_flops(&d, 163) + 5.0 * layer_flops(&d, 34 + 32 + 1) + 768.0;
        assert_eq!(m, expected);
        // Merging twice compounds: 128 -> 64 -> 32.
        let twice = SubStructure {
            depth: 6,
            ratio: 2,
            compress_layers: vec![1, 3],
        };
        let t = pair_flops(&d, lengths, &twice);
        let expected = layer_flops(&d, 163)
            + 2.0 * layer_flops(&d, 34 + 64 + 1)
            + 3.0 * layer_flops(&d, 34 + 32 + 1)
            + 768.0;
        assert_eq!(t, expected);
    }
}
