//! Building blocks shared by the families: norms, rotary positions, masked attention.
//! Norms and softmax have two paths: candle's fused kernels when nothing needs a
//! gradient (inference: several times fewer passes over memory), and differentiable
//! primitives when a LoRA variable is upstream (the fused kernels have no backward).

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;

/// LayerNorm over the last dimension (BERT).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !(x.track_op() || weight.track_op() || bias.track_op()) {
        return Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            weight,
            bias,
            eps as f32,
        )?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// RMSNorm over the last dimension: `x / rms(x) * scale`, where `scale` is the weight
/// (Llama) or `1 + weight` (Gemma; the caller passes the shifted tensor).
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if !(x.track_op() || scale.track_op()) {
        return Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            scale,
            eps as f32,
        )?);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(scale)?)
}

pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?);
    }
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// Masked value used instead of -inf so that fully masked rows (padding queries under
/// a sliding window) stay finite: NaN in a pad row would leak into real rows through
/// `0 * NaN` in the attention-weighted sum.
pub const MASKED: f32 = f32::MIN;

/// Additive padding mask `[B, 1, 1, T]`: 0 for real keys, `MASKED` for padding.
pub fn padding_mask(lengths: &[usize], seq_len: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; lengths.len() * seq_len];
    for (row, &len) in lengths.iter().enumerate() {
        data[row * seq_len + len.min(seq_len)..(row + 1) * seq_len].fill(MASKED);
    }
    Ok(Tensor::from_vec(
        data,
        (lengths.len(), 1, 1, seq_len),
        device,
    )?)
}

/// Additive mask `[B, 1, T, T]` for isolated segments: query `i` sees key `j` only when
/// `j` is a real token of the same segment, the segments being `[0, segment start)` and
/// `[segment start, length)` (the passage's own `[CLS]`, the passage, its `[SEP]`).
pub fn segment_mask(
    lengths: &[usize],
    segment_starts: &[usize],
    seq_len: usize,
    device: &Device,
) -> Result<Tensor> {
    let t = seq_len;
    let mut data = vec![MASKED; lengths.len() * t * t];
    for (row, (&len, &start)) in lengths.iter().zip(segment_starts).enumerate() {
        let len = len.min(t);
        for i in 0..t {
            let segment = if i < start {
                0..start.min(len)
            } else {
                start..len
            };
            data[(row * t + i) * t..][segment].fill(0.0);
        }
    }
    Ok(Tensor::from_vec(data, (lengths.len(), 1, t, t), device)?)
}

/// Position ids `[B, T]` under segment isolation: `0..start` for the query segment,
/// then `0, 1, ...` again from the segment start (the passage's own `[CLS]`).
pub fn segment_positions(
    segment_starts: &[usize],
    seq_len: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut data = Vec::with_capacity(segment_starts.len() * seq_len);
    for &start in segment_starts {
        data.extend((0..seq_len).map(|t| if t < start { t } else { t - start } as u32));
    }
    Ok(Tensor::from_vec(
        data,
        (segment_starts.len(), seq_len),
        device,
    )?)
}

/// Additive causal mask `[B, 1, T, T]` with padding, and optionally a sliding window
/// (key `j` is hidden from query `i` when `j <= i - window`, as transformers does).
pub fn causal_mask(
    lengths: &[usize],
    seq_len: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let t = seq_len;
    let mut data = vec![0f32; lengths.len() * t * t];
    for (row, &len) in lengths.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                let hidden = j > i || j >= len || window.is_some_and(|w| i >= w && j <= i - w);
                if hidden {
                    data[(row * t + i) * t + j] = MASKED;
                }
            }
        }
    }
    Ok(Tensor::from_vec(data, (lengths.len(), 1, t, t), device)?)
}

/// `[B, T, H*D]` → `[B, H, T, D]`.
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    Ok(x.reshape((b, t, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[B, H, T, D]` → `[B, T, H*D]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))?)
}

/// Grouped-query attention: repeat each key/value head `n_rep` times.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .contiguous()?
        .reshape((b, kv * n_rep, t, d))?)
}

/// Attention probabilities of each row's scoring position, summed over heads: the merge
/// weights of the next compress layer. `probs`: `[B, H, T, T]` → `[B, T]`.
pub fn scoring_attention(probs: &Tensor, score_pos: &[usize]) -> Result<Tensor> {
    let summed = probs.sum(1)?; // [B, T, T]
    let rows = score_pos
        .iter()
        .enumerate()
        .map(|(b, &p)| summed.get(b)?.get(p))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// Rotary embedding tables `cos, sin: [T, D]` (halves duplicated, the `rotate_half`
/// convention of transformers) for positions `0..seq_len`.
pub fn rope_tables(inv_freq: &[f32], seq_len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = vec![0f32; seq_len * 2 * half];
    let mut sin = vec![0f32; seq_len * 2 * half];
    for pos in 0..seq_len {
        for (i, &f) in inv_freq.iter().enumerate() {
            // f32 product like transformers (positions and inv_freq in f32).
            let angle = pos as f32 * f;
            let (s, c) = angle.sin_cos();
            for k in [i, i + half] {
                cos[pos * 2 * half + k] = c;
                sin[pos * 2 * half + k] = s;
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (seq_len, 2 * half), device)?,
        Tensor::from_vec(sin, (seq_len, 2 * half), device)?,
    ))
}

/// Applies rotary positions to `[B, H, T, D]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// `[B]` one-hot selection of a position per row from `[B, T, H]` → `[B, H]`.
pub fn gather_rows(hidden: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let rows = positions
        .iter()
        .enumerate()
        .map(|(b, &p)| hidden.get(b)?.get(p))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// Mean over the first `lengths[b]` positions of each row: `[B, T, H]` → `[B, H]`.
pub fn masked_mean(hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, t, _) = hidden.dims3()?;
    let mut w = vec![0f32; b * t];
    for (row, &len) in lengths.iter().enumerate() {
        w[row * t..row * t + len].fill(1.0 / len.max(1) as f32);
    }
    let w = Tensor::from_vec(w, (b, 1, t), hidden.device())?;
    Ok(w.matmul(&hidden.contiguous()?)?.squeeze(1)?)
}

/// A span cut to a padded length `t`, as `(start, len)`: both span readouts read only
/// the tokens that exist, so a span running past the padding reads what is left of it.
pub fn clamp_span(span: &models::Span, t: usize) -> (usize, usize) {
    let end = span.end().min(t);
    let start = span.start.min(end);
    (start, end - start)
}

/// Mean over one span per row: `[B, T, H]` → `[B, H]` (an empty span gives zeros).
pub fn span_mean(hidden: &Tensor, spans: &[models::Span]) -> Result<Tensor> {
    let (b, t, _) = hidden.dims3()?;
    let mut w = vec![0f32; b * t];
    for (row, span) in spans.iter().enumerate() {
        let (start, len) = clamp_span(span, t);
        // The divisor is the span's own length, as the exported graph's `span_weights`.
        w[row * t + start..row * t + start + len].fill(1.0 / span.len.max(1) as f32);
    }
    let w = Tensor::from_vec(w, (b, 1, t), hidden.device())?;
    Ok(w.matmul(&hidden.contiguous()?)?.squeeze(1)?)
}

/// Late interaction (ColBERT's MaxSim) as head features, `[B, T, H]` → `[B, H]`: every
/// L2-normalised query token times the normalised passage token most similar to it,
/// averaged over the query. A head whose weights are all `s` scores `s ·` the mean over
/// query tokens of their best cosine with any passage token. Unlike a pooled cosine,
/// each query term keeps its own match, which is what a shallow layer is good at
/// (exact and near-exact terms) and what mean pooling averages away. The argmax picks
/// the first of equal maxima, as ONNX `ArgMax` does; gradients flow through the chosen
/// tokens only. With `query_weights` (one `[query len]` vector per row, `idf::QueryIdf`)
/// the mean over query tokens is weighted: Σ w·(q ⊙ p) / Σ w.
pub fn max_sim(
    hidden: &Tensor,
    query: &[models::Span],
    passage: &[models::Span],
    query_weights: Option<&[Tensor]>,
) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    let mut rows = Vec::with_capacity(b);
    for row in 0..b {
        let ((qs, ql), (ps, pl)) = (clamp_span(&query[row], t), clamp_span(&passage[row], t));
        if ql == 0 || pl == 0 {
            rows.push(Tensor::zeros(h, hidden.dtype(), hidden.device())?);
            continue;
        }
        let states = hidden.get(row)?;
        let q = normalize(&states.narrow(0, qs, ql)?)?;
        let p = normalize(&states.narrow(0, ps, pl)?)?;
        let best = q.matmul(&p.t()?)?.argmax(1)?;
        let matched = p.index_select(&best, 0)?;
        let products = (q * matched)?;
        match query_weights.map(|w| &w[row]) {
            None => rows.push(products.mean(0)?),
            Some(w) => {
                if w.dims1()? != ql {
                    return Err(crate::error::TrainerError::Input(format!(
                        "max-sim: row {row} has {ql} query tokens but {} query weights",
                        w.dims1()?
                    )));
                }
                let weighted = products.broadcast_mul(&w.unsqueeze(1)?)?.sum(0)?;
                rows.push(weighted.broadcast_div(&w.sum_keepdim(0)?)?);
            }
        }
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// L2-normalises the rows of `[B, H]`.
pub fn normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::Span;

    /// Row `[CLS] q1 q2 p1 p2`: q1 = (1, 0) matches p1 = (3, 0) (cosine 1), q2 = (0, 2)
    /// matches p2 = (1, 1) (cosine 1/√2); features are the mean of the two products.
    #[test]
    fn max_sim_pairs_each_query_token_with_its_best_passage_token() {
        let values = [0.5f32, 0.5, 1.0, 0.0, 0.0, 2.0, 3.0, 0.0, 1.0, 1.0];
        let hidden = Tensor::from_slice(&values, (1, 5, 2), &candle_core::Device::Cpu).unwrap();
        let query = [Span { start: 1, len: 2 }];
        let passage = [Span { start: 3, len: 2 }];
        let features = |passage: &[Span]| -> Vec<f32> {
            let f = max_sim(&hidden, &query, passage, None).unwrap();
            f.flatten_all().unwrap().to_vec1().unwrap()
        };
        let f = features(&passage);
        let r = std::f32::consts::FRAC_1_SQRT_2;
        assert!((f[0] - 0.5).abs() < 1e-6, "{f:?}");
        assert!((f[1] - r / 2.0).abs() < 1e-6, "{f:?}");
        // Unit head weights: the mean of each query token's best cosine.
        assert!((f.iter().sum::<f32>() - (1.0 + r) / 2.0).abs() < 1e-6);
        // A row without passage tokens reads zeros, as the exported graph does.
        let empty = [Span { start: 5, len: 0 }];
        assert_eq!(features(&empty), vec![0.0, 0.0]);
        // Query weights 1 and 3: q2's product counts three times as much as q1's.
        let weights = [Tensor::new(&[1f32, 3.0], &candle_core::Device::Cpu).unwrap()];
        let weighted = max_sim(&hidden, &query, &passage, Some(&weights)).unwrap();
        let w: Vec<f32> = weighted.flatten_all().unwrap().to_vec1().unwrap();
        assert!((w[0] - 0.25).abs() < 1e-6, "{w:?}");
        assert!((w[1] - 3.0 * r / 4.0).abs() < 1e-6, "{w:?}");
        let wrong = [Tensor::new(&[1f32], &candle_core::Device::Cpu).unwrap()];
        assert!(max_sim(&hidden, &query, &passage, Some(&wrong)).is_err());
    }
}
