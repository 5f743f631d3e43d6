//! Pair encoding: (query, passage) → token ids with the spans the model needs.
//!
//! - `bert`: `[CLS] query [SEP] passage [SEP]`, token types 0 then 1; score at 0.
//! - decoders: the Matryoshka paper's template `<bos>A: {query}\nB: {passage}\n{prompt}`,
//!   each piece tokenized without special tokens; score at the last token.
//!
//! Truncation keeps the total within `max_length` (for `bert`, never beyond the position
//! table): the query is capped at 3/4 of the room left by the template, and the passage
//! takes what remains (so it is cut first).
//! The passage span is what width merging may compress; for decoders it is the
//! `B: {passage}` piece, as in the paper's code.

use tokenizers::Tokenizer;

use crate::checkpoint::Checkpoint;
use crate::error::{ModelsError, Result};
use crate::families::{Family, ModelConfig};
use crate::flops::{PairLengths, REFERENCE_PASSAGE_TOKENS, REFERENCE_QUERY_TOKENS};

/// The paper's default relevance prompt for decoder re-rankers.
pub const DEFAULT_PROMPT: &str = "Predict whether passage B contains an answer to query A.";

/// A half-open token range `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

impl Span {
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// A request's pairs, and how long its query was before any cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    pub pairs: Vec<EncodedPair>,
    /// Query tokens before truncation (a decoder's `A: ` prefix included): over
    /// `PairEncoder::query_cap` means the query itself was cut, whatever the documents.
    pub query_tokens: usize,
    /// The query's own text gives no token (only control or zero-width characters):
    /// every document would be scored against the template alone.
    pub query_is_blank: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub input_ids: Vec<u32>,
    /// BERT segment ids (0 query side, 1 passage side); all zero for decoders.
    pub token_type_ids: Vec<u32>,
    pub query: Span,
    pub passage: Span,
    /// The instruction after the passage (decoders only).
    pub prompt: Option<Span>,
    /// Where the score is read: 0 for BERT, the last token for decoders.
    pub score_pos: usize,
    /// Whether the query or passage lost tokens to `max_length` (a cut asked for with
    /// `max_passage_tokens` does not count).
    pub truncated: bool,
    /// The passage keeps its end when cut (TEI's `truncation_direction: "left"`); a
    /// configuration's passage cap then cuts from the start too.
    pub keeps_end: bool,
}

impl EncodedPair {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    pub fn lengths(&self) -> PairLengths {
        PairLengths {
            prefix: self.passage.start,
            passage: self.passage.len,
            suffix: self.len() - self.passage.end(),
        }
    }

    /// The pair with its passage cut to `cap` tokens, the first ones (the last ones when
    /// the pair `keeps_end`): the same pair `PairEncoder::encode_truncating` gives with
    /// `max_passage_tokens = Some(cap)`, since both cut the passage's tokens, not its
    /// text. Everything after the cut (`[SEP]`, a decoder's prompt and score position)
    /// moves up.
    pub fn with_passage_cap(&self, cap: usize) -> EncodedPair {
        if self.passage.len <= cap {
            return self.clone();
        }
        let extra = self.passage.len - cap;
        let cut = if self.keeps_end {
            self.passage.start..self.passage.start + extra
        } else {
            self.passage.start + cap..self.passage.end()
        };
        let removed = cut.len();
        let keep = |v: &[u32]| {
            let mut out = Vec::with_capacity(v.len() - removed);
            out.extend_from_slice(&v[..cut.start]);
            out.extend_from_slice(&v[cut.end..]);
            out
        };
        let shift = |pos: usize| if pos >= cut.end { pos - removed } else { pos };
        EncodedPair {
            input_ids: keep(&self.input_ids),
            token_type_ids: keep(&self.token_type_ids),
            query: self.query,
            passage: Span {
                start: self.passage.start,
                len: cap,
            },
            prompt: self.prompt.map(|p| Span {
                start: shift(p.start),
                len: p.len,
            }),
            score_pos: shift(self.score_pos),
            // A cap is a cut asked for; only `max_length` cuts count as truncation.
            truncated: self.truncated,
            keeps_end: self.keeps_end,
        }
    }
}

enum Template {
    Bert {
        cls: u32,
        sep: u32,
        /// `[CLS]` again before the passage, for isolated segments: each segment is then
        /// `[CLS] text [SEP]`, exactly what the base saw as a bi-encoder.
        passage_cls: bool,
    },
    Decoder {
        bos: Option<u32>,
        newline: Vec<u32>,
        prompt: Vec<u32>,
    },
}

/// Turns (query, passage) pairs into model input for one checkpoint.
pub struct PairEncoder {
    tokenizer: Tokenizer,
    template: Template,
    family: Family,
    pub max_length: usize,
    pub pad_id: u32,
}

impl PairEncoder {
    /// An encoder for `checkpoint` with `max_length` tokens per pair (prompt included).
    pub fn new(checkpoint: &Checkpoint, max_length: usize) -> Result<Self> {
        Self::from_parts(
            checkpoint.tokenizer.clone(),
            &checkpoint.config,
            max_length,
            DEFAULT_PROMPT,
        )
    }

    pub fn from_parts(
        tokenizer: Tokenizer,
        config: &ModelConfig,
        max_length: usize,
        prompt: &str,
    ) -> Result<Self> {
        let encode = |text: &str| -> Result<Vec<u32>> {
            tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| ModelsError::Encoding(e.to_string()))
        };
        let (template, pad_id) = match config {
            ModelConfig::Bert(c) => {
                let id = |t: &str| {
                    tokenizer
                        .token_to_id(t)
                        .ok_or_else(|| ModelsError::Encoding(format!("tokenizer has no {t} token")))
                };
                (
                    Template::Bert {
                        cls: id("[CLS]")?,
                        sep: id("[SEP]")?,
                        passage_cls: false,
                    },
                    c.pad_token_id.unwrap_or(0),
                )
            }
            ModelConfig::Llama(c) => (
                Template::Decoder {
                    bos: c.bos_token_id,
                    newline: encode("\n")?,
                    prompt: encode(prompt)?,
                },
                c.pad_token_id.unwrap_or(0),
            ),
            ModelConfig::Gemma2(c) => (
                Template::Decoder {
                    bos: c.bos_token_id,
                    newline: encode("\n")?,
                    prompt: encode(prompt)?,
                },
                c.pad_token_id.unwrap_or(0),
            ),
        };
        // An absolute position table bounds the sequence: longer pairs would index past
        // it (ONNX Runtime fails the whole batch, candle refuses it). Truncate to the
        // table instead, as the model's own tokenizer config would.
        let max_length = match config {
            ModelConfig::Bert(c) => max_length.min(c.max_position_embeddings),
            ModelConfig::Llama(_) | ModelConfig::Gemma2(_) => max_length, // rotary positions
        };
        let encoder = PairEncoder {
            tokenizer,
            template,
            family: config.family(),
            max_length,
            pad_id,
        };
        if encoder.template_tokens() + 2 > max_length {
            return Err(ModelsError::Encoding(format!(
                "max_length {max_length} leaves no room for query and passage after the {} template tokens",
                encoder.template_tokens()
            )));
        }
        Ok(encoder)
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Encodes pairs for a model with isolated segments (`isolate_segments` in the
    /// adapters): `[CLS] q [SEP] [CLS] p [SEP]`, so the passage segment starts with its
    /// own `[CLS]` at `passage.start - 1`. Decoders have no isolated form and are refused.
    pub fn with_isolated_segments(mut self, on: bool) -> Result<Self> {
        self.set_isolated_segments(on)?;
        Ok(self)
    }

    /// As `with_isolated_segments`, in place.
    pub fn set_isolated_segments(&mut self, on: bool) -> Result<()> {
        match &mut self.template {
            Template::Bert { passage_cls, .. } => *passage_cls = on,
            Template::Decoder { .. } if on => {
                return Err(ModelsError::Encoding(
                    "isolated segments are defined for BERT-family encoders only".into(),
                ))
            }
            Template::Decoder { .. } => {}
        }
        if self.template_tokens() + 2 > self.max_length {
            return Err(ModelsError::Encoding(format!(
                "max_length {} leaves no room for query and passage after the {} template tokens",
                self.max_length,
                self.template_tokens()
            )));
        }
        Ok(())
    }

    /// Whether pairs are encoded for isolated segments (`with_isolated_segments`).
    pub fn isolated_segments(&self) -> bool {
        matches!(
            self.template,
            Template::Bert {
                passage_cls: true,
                ..
            }
        )
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens the template adds around query and passage.
    pub fn template_tokens(&self) -> usize {
        match &self.template {
            Template::Bert { passage_cls, .. } => 3 + *passage_cls as usize,
            Template::Decoder {
                bos,
                newline,
                prompt,
            } => bos.is_some() as usize + 2 * newline.len() + prompt.len(),
        }
    }

    /// The token ids of `text`, without template tokens or truncation.
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelsError::Encoding(e.to_string()))
    }

    /// Encodes one pair; `max_passage_tokens` optionally caps the passage further
    /// (the API's `max_tokens_per_doc`).
    pub fn encode(
        &self,
        query: &str,
        passage: &str,
        max_passage_tokens: Option<usize>,
    ) -> Result<EncodedPair> {
        self.encode_truncating(query, passage, max_passage_tokens, false)
    }

    /// As `encode`; a passage over its budget loses its start instead of its end when
    /// `keep_end` (TEI's `truncation_direction: "left"`).
    pub fn encode_truncating(
        &self,
        query: &str,
        passage: &str,
        max_passage_tokens: Option<usize>,
        keep_end: bool,
    ) -> Result<EncodedPair> {
        let q = self.query_ids(query)?;
        Ok(self.assemble(&q, self.passage_ids(passage)?, max_passage_tokens, keep_end))
    }

    /// Encodes one request: its query against each passage, the query tokenized once
    /// (per pair, a long query would be tokenized once per document).
    pub fn encode_request<S: AsRef<str>>(
        &self,
        query: &str,
        passages: &[S],
        max_passage_tokens: Option<usize>,
        keep_end: bool,
    ) -> Result<EncodedRequest> {
        let q = self.query_ids(query)?;
        let query_is_blank = match &self.template {
            Template::Bert { .. } => q.is_empty(),
            Template::Decoder { .. } => self.tokens(query)?.is_empty(),
        };
        let pairs = passages
            .iter()
            .map(|p| {
                let p = self.passage_ids(p.as_ref())?;
                Ok(self.assemble(&q, p, max_passage_tokens, keep_end))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EncodedRequest {
            pairs,
            query_tokens: q.len(),
            query_is_blank,
        })
    }

    /// The most query tokens a pair keeps: 3/4 of what the template leaves of
    /// `max_length`, so a long query still leaves room for the passage.
    pub fn query_cap(&self) -> usize {
        (self.max_length - self.template_tokens()) * 3 / 4
    }

    fn query_ids(&self, query: &str) -> Result<Vec<u32>> {
        match &self.template {
            Template::Bert { .. } => self.tokens(query),
            Template::Decoder { .. } => self.tokens(&format!("A: {query}")),
        }
    }

    fn passage_ids(&self, passage: &str) -> Result<Vec<u32>> {
        match &self.template {
            Template::Bert { .. } => self.tokens(passage),
            Template::Decoder { .. } => self.tokens(&format!("B: {passage}")),
        }
    }

    /// Builds a pair from token ids: the query cut to `query_cap`, the passage to what
    /// is left of `max_length` and to `max_passage_tokens`. `truncated` reports only
    /// cuts forced by `max_length`; `max_passage_tokens` is a cut the caller asked for.
    fn assemble(
        &self,
        query: &[u32],
        mut p: Vec<u32>,
        max_passage_tokens: Option<usize>,
        keep_end: bool,
    ) -> EncodedPair {
        let budget = self.max_length - self.template_tokens();
        let q = &query[..query.len().min(self.query_cap())];
        let room = budget - q.len();
        let truncated = q.len() < query.len() || p.len() > room;
        let passage_cap = room.min(max_passage_tokens.unwrap_or(usize::MAX));
        if p.len() > passage_cap {
            if keep_end {
                p.drain(..p.len() - passage_cap);
            } else {
                p.truncate(passage_cap);
            }
        }
        let mut ids = Vec::with_capacity(q.len() + p.len() + self.template_tokens());
        let mut types = Vec::with_capacity(ids.capacity());
        let (query_span, passage_span, prompt_span) = match &self.template {
            Template::Bert {
                cls,
                sep,
                passage_cls,
            } => {
                ids.push(*cls);
                let query_span = Span {
                    start: 1,
                    len: q.len(),
                };
                ids.extend_from_slice(q);
                ids.push(*sep);
                if *passage_cls {
                    ids.push(*cls);
                }
                types.resize(ids.len(), 0);
                let passage_span = Span {
                    start: ids.len(),
                    len: p.len(),
                };
                ids.extend_from_slice(&p);
                ids.push(*sep);
                types.resize(ids.len(), 1);
                (query_span, passage_span, None)
            }
            Template::Decoder {
                bos,
                newline,
                prompt,
            } => {
                ids.extend(bos.iter().copied());
                let query_span = Span {
                    start: ids.len(),
                    len: q.len(),
                };
                ids.extend_from_slice(q);
                ids.extend_from_slice(newline);
                let passage_span = Span {
                    start: ids.len(),
                    len: p.len(),
                };
                ids.extend_from_slice(&p);
                ids.extend_from_slice(newline);
                let prompt_span = Span {
                    start: ids.len(),
                    len: prompt.len(),
                };
                ids.extend_from_slice(prompt);
                types.resize(ids.len(), 0);
                (query_span, passage_span, Some(prompt_span))
            }
        };
        let score_pos = if self.family.is_decoder() {
            ids.len() - 1
        } else {
            0
        };
        EncodedPair {
            input_ids: ids,
            token_type_ids: types,
            query: query_span,
            passage: passage_span,
            prompt: prompt_span,
            score_pos,
            truncated,
            keeps_end: keep_end,
        }
    }

    /// Token counts at the reference lengths (query 32, passage 128) for FLOP reports.
    pub fn reference_lengths(&self) -> PairLengths {
        let template_before = match &self.template {
            Template::Bert { passage_cls, .. } => 2 + *passage_cls as usize,
            Template::Decoder { bos, newline, .. } => bos.is_some() as usize + newline.len(),
        };
        PairLengths {
            prefix: template_before + REFERENCE_QUERY_TOKENS,
            passage: REFERENCE_PASSAGE_TOKENS,
            suffix: self.template_tokens() - template_before,
        }
    }
}

/// A right-padded batch of encoded pairs, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// Real length of each row (the mask is `position < lengths[row]`).
    pub lengths: Vec<usize>,
    pub query: Vec<Span>,
    pub passage: Vec<Span>,
    pub score_pos: Vec<usize>,
    /// Each row's `EncodedPair::keeps_end`.
    pub keeps_end: Vec<bool>,
}

impl PaddedBatch {
    pub fn new(pairs: &[EncodedPair], pad_id: u32) -> Self {
        let seq_len = pairs.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut input_ids = vec![pad_id; pairs.len() * seq_len];
        let mut token_type_ids = vec![0; pairs.len() * seq_len];
        for (row, pair) in pairs.iter().enumerate() {
            input_ids[row * seq_len..row * seq_len + pair.len()].copy_from_slice(&pair.input_ids);
            token_type_ids[row * seq_len..row * seq_len + pair.len()]
                .copy_from_slice(&pair.token_type_ids);
        }
        PaddedBatch {
            batch_size: pairs.len(),
            seq_len,
            input_ids,
            token_type_ids,
            lengths: pairs.iter().map(|p| p.len()).collect(),
            query: pairs.iter().map(|p| p.query).collect(),
            passage: pairs.iter().map(|p| p.passage).collect(),
            score_pos: pairs.iter().map(|p| p.score_pos).collect(),
            keeps_end: pairs.iter().map(|p| p.keeps_end).collect(),
        }
    }

    /// Row `row` as the encoded pair it was made from (without a decoder's prompt
    /// span, which a batch does not keep).
    pub fn row(&self, row: usize) -> EncodedPair {
        let range = row * self.seq_len..row * self.seq_len + self.lengths[row];
        EncodedPair {
            input_ids: self.input_ids[range.clone()].to_vec(),
            token_type_ids: self.token_type_ids[range].to_vec(),
            query: self.query[row],
            passage: self.passage[row],
            prompt: None,
            score_pos: self.score_pos[row],
            truncated: false,
            keeps_end: self.keeps_end[row],
        }
    }

    /// The batch with every passage cut to its first `cap` tokens, padded again (a
    /// capped configuration's input); `None` when no passage is longer than `cap`.
    pub fn with_passage_cap(&self, cap: usize, pad_id: u32) -> Option<PaddedBatch> {
        if self.passage.iter().all(|p| p.len <= cap) {
            return None;
        }
        let rows: Vec<EncodedPair> = (0..self.batch_size)
            .map(|r| self.row(r).with_passage_cap(cap))
            .collect();
        Some(PaddedBatch::new(&rows, pad_id))
    }

    /// The 0/1 attention mask, row-major.
    pub fn attention_mask(&self) -> Vec<u32> {
        let mut mask = vec![0; self.batch_size * self.seq_len];
        for (row, &len) in self.lengths.iter().enumerate() {
            mask[row * self.seq_len..row * self.seq_len + len].fill(1);
        }
        mask
    }
}

/// Splits pairs (indices sorted by length) into batches of at most `token_budget`
/// padded tokens, so short pairs are not padded to the longest one.
pub fn token_budget_batches(pairs: &[EncodedPair], token_budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| pairs[i].len());
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newest pair is the longest of the batch.
        if !current.is_empty() && (current.len() + 1) * pairs[i].len() > token_budget {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}
