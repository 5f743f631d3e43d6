//! The Matryoshka forward pass shared by every family: run layers up to the deepest
//! requested depth, merge passage tokens before each compress layer, and read a score
//! from the head of every depth that has one. Layers past the depth are never computed.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use models::{PaddedBatch, SubStructure};

use crate::error::{Result, TrainerError};
use crate::idf::QueryIdf;
use crate::layers::{gather_rows, masked_mean, max_sim, normalize, span_mean};
use crate::linear::Linear;
use crate::merge::{apply_merge, plan_merge, MergeMode, RowLayout};

/// What a family implements; the driver below does the rest.
pub trait Backbone {
    fn num_layers(&self) -> usize;
    fn hidden_size(&self) -> usize;
    fn device(&self) -> &Device;
    /// Token (and position, type) embeddings: `[B, T, H]`, the input of layer 0.
    fn embed(&self, input: &ModelInput) -> Result<Tensor>;
    /// Runs 0-based layer `index` on `[B, T, H]`. When `want_attention`, also returns the
    /// attention of each row's scoring position, summed over heads (`[B, T]`).
    fn layer(
        &self,
        index: usize,
        hidden: &Tensor,
        layout: &RowLayout,
        want_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)>;
    /// The vector a head reads for each row, `[B, H]`: BERT's `[CLS]` state or token
    /// mean; decoders apply the final norm and take the scoring position.
    /// `query_weights`: per row, the weight of each query token in a max-sim readout
    /// (`idf::QueryIdf`); `None` weighs them equally.
    fn readout(
        &self,
        hidden: &Tensor,
        layout: &RowLayout,
        readout: Readout,
        query_weights: Option<&[Tensor]>,
    ) -> Result<Tensor>;
    /// Every LoRA-capable projection as (layer, name, linear); names are `q`, `k`, `v`,
    /// `o`, `up`, `down` and, for gated MLPs, `gate`.
    fn projections_mut(&mut self) -> Vec<(usize, &'static str, &mut Linear)>;
    /// Segment isolation: query and passage tokens attend only within their own
    /// segment, and the passage segment (its own `[CLS]`, the passage, `[SEP]`) restarts
    /// at position 0, so each segment is encoded exactly as the base encodes it alone (a
    /// mean-pooling bi-encoder keeps its own similarity at full depth). Rows come from
    /// `PairEncoder::with_isolated_segments`. Families without it refuse.
    fn isolate_segments(&mut self, on: bool) -> Result<()> {
        if on {
            return Err(TrainerError::Input(
                "segment isolation (model.isolate_segments) is implemented for bert only".into(),
            ));
        }
        Ok(())
    }
    /// Final transform of a head's logit (Gemma2's soft-capping); identity elsewhere.
    fn transform_score(&self, score: Tensor) -> Result<Tensor> {
        Ok(score)
    }
}

/// Which hidden state a head reads (a checkpoint-level choice for BERT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Readout {
    /// The scoring position: `[CLS]` for BERT, the last real token for decoders.
    #[default]
    ScoringPosition,
    /// The mean over real tokens (for bases trained with mean pooling).
    Mean,
    /// The interaction of query and passage: the element-wise product of the
    /// L2-normalised mean of the query tokens and of the passage tokens. A head whose
    /// weights are all `s` scores `s · cos(query, passage)`, so a base trained as a
    /// mean-pooling bi-encoder starts from its own similarity instead of from noise.
    SpanProduct,
    /// Late interaction (`layers::max_sim`): each query token's best cosine with a
    /// passage token, as a vector a head weighs. Unit head weights score the mean of
    /// those cosines; for a mean-pooling bi-encoder base that starts above the pooled
    /// cosine at every depth.
    MaxSim,
}

impl Readout {
    /// `[B, T, H]` hidden states (after any final norm) → `[B, H]` head input.
    /// `query_weights` weigh the query tokens of max-sim (the config allows them only
    /// there).
    pub fn features(
        self,
        hidden: &Tensor,
        layout: &RowLayout,
        query_weights: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        match self {
            Readout::ScoringPosition => gather_rows(hidden, &layout.score_pos),
            Readout::Mean => masked_mean(hidden, &layout.lengths),
            Readout::SpanProduct => {
                let q = normalize(&span_mean(hidden, &layout.query)?)?;
                let p = normalize(&span_mean(hidden, &layout.passage)?)?;
                Ok((q * p)?)
            }
            Readout::MaxSim => max_sim(hidden, &layout.query, &layout.passage, query_weights),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Readout::ScoringPosition => "scoring-position",
            Readout::Mean => "mean",
            Readout::SpanProduct => "span-product",
            Readout::MaxSim => "max-sim",
        }
    }

    /// Readouts of query and passage spans whose unit-weight heads score a similarity
    /// (the starting point of a bi-encoder base); both need the query span.
    pub fn reads_spans(self) -> bool {
        matches!(self, Readout::SpanProduct | Readout::MaxSim)
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Readout::ScoringPosition,
            Readout::Mean,
            Readout::SpanProduct,
            Readout::MaxSim,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// A batch on the device, with the layout the merge needs.
pub struct ModelInput {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub layout: RowLayout,
}

impl ModelInput {
    pub fn new(batch: &PaddedBatch, device: &Device) -> Result<Self> {
        let shape = (batch.batch_size, batch.seq_len);
        Ok(ModelInput {
            input_ids: Tensor::from_vec(batch.input_ids.clone(), shape, device)?,
            token_type_ids: Tensor::from_vec(batch.token_type_ids.clone(), shape, device)?,
            layout: RowLayout {
                seq_len: batch.seq_len,
                lengths: batch.lengths.clone(),
                query: batch.query.clone(),
                passage: batch.passage.clone(),
                score_pos: batch.score_pos.clone(),
            },
        })
    }
}

/// Per-layer scoring heads, `Linear(hidden, 1)`, indexed by layer number (the depth
/// whose output they read), never by position in a list.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    pub by_depth: BTreeMap<usize, Linear>,
    pub readout: Readout,
    /// IDF weights of the query tokens in max-sim, with each depth's exponent.
    pub query_idf: Option<QueryIdf>,
}

impl Heads {
    /// Zero-initialised heads for depths `min_depth..=num_layers`.
    pub fn zeros(
        min_depth: usize,
        num_layers: usize,
        hidden: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut by_depth = BTreeMap::new();
        for d in min_depth..=num_layers {
            let w = Tensor::zeros((1, hidden), candle_core::DType::F32, device)?;
            let b = Tensor::zeros(1, candle_core::DType::F32, device)?;
            by_depth.insert(d, Linear::new(w, Some(b)));
        }
        Ok(Heads {
            by_depth,
            readout: Readout::default(),
            query_idf: None,
        })
    }

    pub fn min_depth(&self) -> Option<usize> {
        self.by_depth.keys().next().copied()
    }
}

/// Output of one forward pass.
pub struct ForwardOutput {
    /// `[B]` score of every depth ≤ the sub-structure's depth that has a head.
    pub scores: BTreeMap<usize, Tensor>,
    /// Hidden state after each layer (index k = after k layers), when asked for.
    pub hidden: Vec<Tensor>,
    /// Row layout after each layer (same indexing as `hidden`), when asked for.
    pub layouts: Vec<RowLayout>,
}

/// Runs `model` under sub-structure `sub`.
pub fn forward(
    model: &dyn Backbone,
    heads: &Heads,
    input: &ModelInput,
    sub: &SubStructure,
    mode: MergeMode,
    capture_hidden: bool,
) -> Result<ForwardOutput> {
    if sub.depth == 0 || sub.depth > model.num_layers() {
        return Err(TrainerError::Input(format!(
            "sub-structure {sub} asks for depth {} but the model has {} layers",
            sub.depth,
            model.num_layers()
        )));
    }
    let compress = |layer: usize| sub.ratio > 1 && sub.compress_layers.contains(&layer);
    let mut hidden = model.embed(input)?;
    let mut layout = input.layout.clone();
    let mut out = ForwardOutput {
        scores: BTreeMap::new(),
        hidden: Vec::new(),
        layouts: Vec::new(),
    };
    if capture_hidden {
        out.hidden.push(hidden.clone());
        out.layouts.push(layout.clone());
    }
    let query_log_idf = match &heads.query_idf {
        Some(idf) => Some(idf.query_log_idf(&input.input_ids, &input.layout)?),
        None => None,
    };
    // Idf merging: every position's weight, carried through each merge.
    let mut idf_weights = match mode {
        MergeMode::Idf if sub.ratio > 1 => {
            let idf = heads.query_idf.as_ref().ok_or_else(|| {
                TrainerError::Input("idf merging needs the adapters' idf table".into())
            })?;
            Some(idf.merge_weights(&input.input_ids)?)
        }
        _ => None,
    };
    let mut attention: Option<Tensor> = None;
    for layer in 0..sub.depth {
        if compress(layer) {
            let weights: Vec<f32> = match (&attention, mode, &idf_weights) {
                (Some(a), MergeMode::Attention, _) => a.flatten_all()?.to_vec1()?,
                (_, MergeMode::Idf, Some(w)) => w.clone(),
                _ => Vec::new(),
            };
            let plan = plan_merge(&layout, &weights, sub.ratio, mode);
            if let Some(w) = &mut idf_weights {
                *w = plan.carry(w);
            }
            hidden = apply_merge(&plan, &hidden, model.device())?;
            layout = plan.layout;
        }
        let want_attention = mode == MergeMode::Attention && compress(layer + 1);
        let (next, attn) = model.layer(layer, &hidden, &layout, want_attention)?;
        hidden = next;
        attention = attn;
        let depth = layer + 1;
        if let Some(head) = heads.by_depth.get(&depth) {
            let query_weights = match (&heads.query_idf, &query_log_idf) {
                (Some(idf), Some(rows)) => Some(idf.weights(rows, depth)?),
                _ => None,
            };
            let features =
                model.readout(&hidden, &layout, heads.readout, query_weights.as_deref())?;
            let score = head.forward(&features)?.squeeze(1)?;
            out.scores.insert(depth, model.transform_score(score)?);
        }
        if capture_hidden {
            out.hidden.push(hidden.clone());
            out.layouts.push(layout.clone());
        }
    }
    Ok(out)
}
