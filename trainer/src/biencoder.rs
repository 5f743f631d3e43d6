//! The base model used as it was trained: a bi-encoder. Query and passage are encoded
//! separately (`[CLS] text [SEP]`), mean-pooled over tokens and compared by cosine.
//!
//! This is the reference row of the quality table (what the same weights score without
//! any re-ranker training) and a teacher that mrank computes itself for distillation.

use candle_core::{Device, Tensor};
use models::{EncodedPair, PaddedBatch, PairEncoder, Span, SubStructure};

use crate::error::{Result, TrainerError};
use crate::forward::{forward, Backbone, Heads, ModelInput};
use crate::layers::{masked_mean, normalize};
use crate::merge::MergeMode;

/// Encodes one text as a single BERT segment: `[CLS] text [SEP]`, capped at `max_length`.
fn encode_single(encoder: &PairEncoder, text: &str, max_length: usize) -> Result<EncodedPair> {
    let tokenizer = encoder.tokenizer();
    let special = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| TrainerError::Input(format!("the bi-encoder needs a {t} token")))
    };
    let mut ids = tokenizer
        .encode(text, false)
        .map_err(|e| TrainerError::Input(e.to_string()))?
        .get_ids()
        .to_vec();
    ids.truncate(max_length.saturating_sub(2));
    let len = ids.len();
    let mut input_ids = vec![special("[CLS]")?];
    input_ids.extend(ids);
    input_ids.push(special("[SEP]")?);
    let row_len = input_ids.len();
    Ok(EncodedPair {
        token_type_ids: vec![0; row_len],
        input_ids,
        query: Span { start: 1, len },
        // No passage. Its span starts past the row so that a backbone isolating segments
        // (which splits a row at `passage.start - 1`, the passage's own `[CLS]`) keeps
        // the whole text in one segment: the text is encoded exactly as the base would.
        passage: Span {
            start: row_len + 1,
            len: 0,
        },
        prompt: None,
        score_pos: 0,
        truncated: false,
        keeps_end: false,
    })
}

/// The last layer's hidden states of `texts`, each encoded alone, in chunks of 32:
/// `(states [n, T, H], token counts without [CLS] and [SEP])` per chunk.
fn last_hidden_states(
    model: &dyn Backbone,
    encoder: &PairEncoder,
    texts: &[&str],
    max_length: usize,
    device: &Device,
) -> Result<Vec<(Tensor, PaddedBatch)>> {
    let encoded = texts
        .iter()
        .map(|t| encode_single(encoder, t, max_length))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for chunk in encoded.chunks(32) {
        let batch = PaddedBatch::new(chunk, encoder.pad_id);
        let input = ModelInput::new(&batch, device)?;
        let result = forward(
            model,
            &Heads::default(),
            &input,
            &SubStructure::full(model.num_layers()),
            MergeMode::Attention,
            true,
        )?;
        let last = result
            .hidden
            .last()
            .expect("forward captured hidden states")
            .clone();
        out.push((last, batch));
    }
    Ok(out)
}

/// Mean-pooled, L2-normalised embeddings of `texts` after all layers: `[N, H]`.
pub fn embed(
    model: &dyn Backbone,
    encoder: &PairEncoder,
    texts: &[&str],
    max_length: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut out = Vec::new();
    for (last, batch) in last_hidden_states(model, encoder, texts, max_length, device)? {
        let pooled = masked_mean(&last, &batch.lengths)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        out.push(pooled.broadcast_div(&norm)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Each text's L2-normalised token states after all layers, `[tokens, H]`, without
/// `[CLS]` and `[SEP]` (the spans the max-sim readout reads).
fn token_states(
    model: &dyn Backbone,
    encoder: &PairEncoder,
    texts: &[&str],
    max_length: usize,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(texts.len());
    for (last, batch) in last_hidden_states(model, encoder, texts, max_length, device)? {
        for (row, &len) in batch.lengths.iter().enumerate() {
            // `len` counts [CLS] and [SEP]; the text's tokens sit between them.
            let tokens = last.get(row)?.narrow(0, 1, len.saturating_sub(2))?;
            out.push(normalize(&tokens)?);
        }
    }
    Ok(out)
}

/// Late interaction of the base as it is (ColBERT's MaxSim over the last layer): for
/// each passage, the mean over query tokens of their best cosine with a passage token.
/// This is what the untrained `max-sim` readout scores at full depth on isolated
/// segments (divided by its head scale), except that here each text is truncated on its
/// own rather than as a pair. A passage without tokens scores 0.
pub fn max_sim_scores(
    model: &dyn Backbone,
    encoder: &PairEncoder,
    query: &str,
    passages: &[&str],
    max_length: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let q = token_states(model, encoder, &[query], max_length, device)?.remove(0);
    let (query_tokens, _) = q.dims2()?;
    token_states(model, encoder, passages, max_length, device)?
        .iter()
        .map(|p| {
            if query_tokens == 0 || p.dims2()?.0 == 0 {
                return Ok(0.0);
            }
            let best = q.matmul(&p.t()?)?.max(1)?;
            Ok(best.mean_all()?.to_scalar::<f32>()?)
        })
        .collect()
}

/// Cosine similarity of the query to each passage.
pub fn cosine_scores(
    model: &dyn Backbone,
    encoder: &PairEncoder,
    query: &str,
    passages: &[&str],
    max_length: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let q = embed(model, encoder, &[query], max_length, device)?;
    let p = embed(model, encoder, passages, max_length, device)?;
    Ok(p.matmul(&q.t()?)?.squeeze(1)?.to_vec1()?)
}
