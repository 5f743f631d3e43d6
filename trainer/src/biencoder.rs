//! The base model used as it was trained: a bi-encoder. Query and passage are encoded
//! separately (`[CLS] text [SEP]`), mean-pooled over tokens and compared by cosine.
//!
//! This is the reference row of the quality table (what the same weights score without
//! any re-ranker training) and a teacher that mrank computes itself for distillation.

use candle_core::{Device, Tensor};
use models::{EncodedPair, PaddedBatch, PairEncoder, Span, SubStructure};

use crate::error::{Result, TrainerError};
use crate::forward::{forward, Backbone, Heads, ModelInput};
use crate::layers::masked_mean;
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
    Ok(EncodedPair {
        token_type_ids: vec![0; input_ids.len()],
        input_ids,
        query: Span { start: 1, len },
        passage: Span {
            start: 1 + len,
            len: 0,
        },
        prompt: None,
        score_pos: 0,
        truncated: false,
    })
}

/// Mean-pooled, L2-normalised embeddings of `texts` after all layers: `[N, H]`.
pub fn embed(
    model: &dyn Backbone,
    encoder: &PairEncoder,
    texts: &[&str],
    max_length: usize,
    device: &Device,
) -> Result<Tensor> {
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
            .expect("forward captured hidden states");
        let pooled = masked_mean(last, &batch.lengths)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        out.push(pooled.broadcast_div(&norm)?);
    }
    Ok(Tensor::cat(&out, 0)?)
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
