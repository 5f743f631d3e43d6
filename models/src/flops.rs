//! FLOP estimates per (query, passage) pair, used to place sub-structures on the
//! quality/cost frontier. Counts multiply-adds as 2 FLOPs in the matmuls that dominate:
//! q/k/v/o projections, attention scores and weighted sums, and the MLP. Norms,
//! activations, softmax, embedding lookups and the readout are left out (well under 1%
//! at these sizes).

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

/// Pairs of one query in the reference batch: the batch manifest latencies are measured
/// on (`export::measure`), and the number of pairs a reference query is shared by.
pub const REFERENCE_BATCH_PAIRS: usize = 32;

/// How a pair's query and passage meet in the encoder, which decides what a pair costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Segments {
    /// One sequence per pair (a cross-encoder): every token attends to every other, and
    /// each pair encodes its query again.
    Joint,
    /// Query and passage encoded as two texts (`isolate_segments`): attention stays
    /// within a segment, and a graph call encodes each distinct query once for all its
    /// pairs (`runtime::split_inputs`), so a pair pays `query_share` of the query's
    /// encoding. The pair's prefix ends with the passage's own `[CLS]`
    /// (`[CLS] q [SEP] [CLS]`), which belongs to the passage segment.
    Isolated { query_share: f64 },
}

impl Segments {
    /// At the reference lengths: a query shared by the `REFERENCE_BATCH_PAIRS` pairs of
    /// the reference batch.
    pub fn reference(isolated: bool) -> Self {
        Self::for_request(isolated, REFERENCE_BATCH_PAIRS)
    }

    /// For the `pairs` pairs of one request, its query encoded once per batch of up to
    /// `REFERENCE_BATCH_PAIRS` pairs. (The server batches by tokens: its 2048-token
    /// batches hold 15 to 30 DL19 pairs, so this is close to what it runs.)
    pub fn for_request(isolated: bool, pairs: usize) -> Self {
        if !isolated {
            return Segments::Joint;
        }
        let pairs = pairs.max(1);
        Segments::Isolated {
            query_share: pairs.div_ceil(REFERENCE_BATCH_PAIRS) as f64 / pairs as f64,
        }
    }
}

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
/// Isolated segments run each layer over the passage segment and the pair's share of
/// the query segment.
pub fn pair_flops(
    d: &Dimensions,
    lengths: PairLengths,
    segments: Segments,
    s: &SubStructure,
) -> f64 {
    let mut passage = lengths.passage;
    let mut total = 0.0;
    for layer in 0..s.depth {
        if s.ratio > 1 && s.compress_layers.contains(&layer) {
            passage = passage.div_ceil(s.ratio);
        }
        total += match segments {
            Segments::Joint => layer_flops(d, lengths.prefix + passage + lengths.suffix),
            Segments::Isolated { query_share } => {
                let query = lengths.prefix.saturating_sub(1);
                let passage_segment = lengths.prefix.min(1) + passage + lengths.suffix;
                layer_flops(d, passage_segment) + query_share * layer_flops(d, query)
            }
        };
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
        let full = pair_flops(&d, lengths, Segments::Joint, &SubStructure::full(6));
        let half_depth = pair_flops(&d, lengths, Segments::Joint, &SubStructure::depth_only(3));
        assert!((half_depth / full - 0.5).abs() < 1e-6);
        let merged = SubStructure {
            depth: 6,
            ratio: 4,
            compress_layers: vec![1],
        };
        let m = pair_flops(&d, lengths, Segments::Joint, &merged);
        let expected = layer_flops(&d, 163) + 5.0 * layer_flops(&d, 34 + 32 + 1) + 768.0;
        assert_eq!(m, expected);
        // Merging twice compounds: 128 -> 64 -> 32.
        let twice = SubStructure {
            depth: 6,
            ratio: 2,
            compress_layers: vec![1, 3],
        };
        let t = pair_flops(&d, lengths, Segments::Joint, &twice);
        let expected = layer_flops(&d, 163)
            + 2.0 * layer_flops(&d, 34 + 64 + 1)
            + 3.0 * layer_flops(&d, 34 + 32 + 1)
            + 768.0;
        assert_eq!(t, expected);
    }

    #[test]
    fn isolated_segments_pay_a_share_of_the_query() {
        let d = minilm();
        // `[CLS] q [SEP] [CLS]` (35), 128 passage tokens, `[SEP]`: the query segment is
        // 34 tokens, the passage segment 130.
        let lengths = PairLengths {
            prefix: 35,
            passage: 128,
            suffix: 1,
        };
        let shared = Segments::Isolated { query_share: 0.25 };
        let full = pair_flops(&d, lengths, shared, &SubStructure::full(6));
        let expected = 6.0 * (layer_flops(&d, 130) + 0.25 * layer_flops(&d, 34)) + 768.0;
        assert_eq!(full, expected);
        // Attention within segments is cheaper than over the joint sequence, even with
        // the whole query paid for.
        let alone = Segments::Isolated { query_share: 1.0 };
        let joint = pair_flops(&d, lengths, Segments::Joint, &SubStructure::full(6));
        assert!(pair_flops(&d, lengths, alone, &SubStructure::full(6)) < joint);
        // Merging shrinks only the passage segment.
        let merged = SubStructure {
            depth: 2,
            ratio: 4,
            compress_layers: vec![1],
        };
        let m = pair_flops(&d, lengths, shared, &merged);
        let expected = layer_flops(&d, 130)
            + layer_flops(&d, 1 + 32 + 1)
            + 2.0 * 0.25 * layer_flops(&d, 34)
            + 768.0;
        assert_eq!(m, expected);
    }

    #[test]
    fn a_query_is_encoded_once_per_reference_batch() {
        assert_eq!(Segments::for_request(false, 100), Segments::Joint);
        assert_eq!(
            Segments::reference(true),
            Segments::Isolated {
                query_share: 1.0 / 32.0
            }
        );
        // 100 pairs take four batches of at most 32.
        assert_eq!(
            Segments::for_request(true, 100),
            Segments::Isolated { query_share: 0.04 }
        );
        assert_eq!(
            Segments::for_request(true, 0),
            Segments::Isolated { query_share: 1.0 }
        );
    }
}
