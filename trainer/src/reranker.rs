//! A loaded Matryoshka re-ranker for the candle path: base checkpoint + adapters +
//! pair encoder, scoring (query, passages) under any sub-structure. Used by `mrank eval`,
//! by training-time validation, and as the reference the ONNX export is checked against.

use std::path::Path;

use candle_core::Device;
use models::{Checkpoint, EncodedPair, PaddedBatch, PairEncoder, SubStructure};

use crate::adapters::Adapters;
use crate::error::{Result, TrainerError};
use crate::families::load_backbone;
use crate::forward::{forward, Backbone, ModelInput};

pub struct Reranker {
    pub backbone: Box<dyn Backbone + Send + Sync>,
    pub dims: models::Dimensions,
    pub adapters: Adapters,
    pub encoder: PairEncoder,
    pub architecture: String,
    device: Device,
    active_sets: Vec<String>,
}

pub use models::encoding::token_budget_batches;

impl Reranker {
    /// Loads `model_dir` with `adapters` (a file from `mrank train`), or the untrained
    /// span-product heads when `adapters` is `None`.
    pub fn load(
        model_dir: &Path,
        adapters: Option<&Path>,
        max_length: usize,
        device: &Device,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(model_dir)?;
        let mut backbone = load_backbone(&checkpoint, device)?;
        let dims = checkpoint.config.dimensions();
        let architecture = checkpoint.config.variant_name().to_string();
        let adapters = Adapters::for_base(&checkpoint, adapters, device)?;
        adapters.merge_set_into("sd", backbone.as_mut())?;
        let encoder = PairEncoder::new(&checkpoint, max_length)?;
        let isolated = adapters.meta.isolate_segments;
        let mut reranker =
            Self::from_parts(backbone, dims, adapters, encoder, architecture, device);
        reranker.set_isolated_segments(isolated)?;
        Ok(reranker)
    }

    /// Encodes query and passage as isolated segments (or joined), in the three places
    /// that must agree: the backbone's attention, the pair encoder's layout and the
    /// adapters' header (which an export reads).
    pub fn set_isolated_segments(&mut self, on: bool) -> Result<()> {
        self.backbone.isolate_segments(on)?;
        self.encoder.set_isolated_segments(on)?;
        self.adapters.meta.isolate_segments = on;
        Ok(())
    }

    pub fn from_parts(
        backbone: Box<dyn Backbone + Send + Sync>,
        dims: models::Dimensions,
        adapters: Adapters,
        encoder: PairEncoder,
        architecture: String,
        device: &Device,
    ) -> Self {
        Reranker {
            backbone,
            dims,
            adapters,
            encoder,
            architecture,
            device: device.clone(),
            active_sets: Vec::new(),
        }
    }

    pub fn backbone_dims(&self) -> models::Dimensions {
        self.dims.clone()
    }

    pub fn num_layers(&self) -> usize {
        self.backbone.num_layers()
    }

    pub fn min_depth(&self) -> usize {
        self.adapters.heads.min_depth().unwrap_or(1)
    }

    pub fn parse_sub(&self, id: &str) -> Result<SubStructure> {
        Ok(SubStructure::parse(
            id,
            self.num_layers(),
            self.min_depth(),
        )?)
    }

    /// Activates the adapters of `sub` (V_d + H_r) if they differ from the current ones.
    fn activate(&mut self, sub: &SubStructure) {
        let sets = self.adapters.active_sets(sub);
        if sets != self.active_sets {
            self.adapters.activate(&sets, self.backbone.as_mut());
            self.active_sets = sets;
        }
    }

    /// Scores encoded pairs under `sub`: the score of the head at `sub.depth`.
    pub fn score_pairs(
        &mut self,
        pairs: &[EncodedPair],
        sub: &SubStructure,
        token_budget: usize,
    ) -> Result<Vec<f32>> {
        Ok(self
            .score_pairs_all_depths(pairs, sub, token_budget)?
            .remove(&sub.depth)
            .unwrap_or_default())
    }

    /// Scores of every depth ≤ `sub.depth` with a head, from one pass. Only valid as
    /// per-depth scores when every depth shares the same adapters (one vertical set).
    pub fn score_pairs_all_depths(
        &mut self,
        pairs: &[EncodedPair],
        sub: &SubStructure,
        token_budget: usize,
    ) -> Result<std::collections::BTreeMap<usize, Vec<f32>>> {
        if !self.adapters.heads.by_depth.contains_key(&sub.depth) {
            return Err(TrainerError::Input(format!(
                "no scoring head for depth {} (heads exist for {:?})",
                sub.depth,
                self.adapters.heads.by_depth.keys().collect::<Vec<_>>()
            )));
        }
        self.activate(sub);
        let mut out: std::collections::BTreeMap<usize, Vec<f32>> =
            std::collections::BTreeMap::new();
        for batch_idx in token_budget_batches(pairs, token_budget) {
            let chunk: Vec<EncodedPair> = batch_idx.iter().map(|&i| pairs[i].clone()).collect();
            let batch = PaddedBatch::new(&chunk, self.encoder.pad_id);
            let input = ModelInput::new(&batch, &self.device)?;
            let result = forward(
                self.backbone.as_ref(),
                &self.adapters.heads,
                &input,
                sub,
                self.adapters.merge_mode(),
                false,
            )?;
            for (depth, scores) in result.scores {
                let values: Vec<f32> = scores.to_vec1()?;
                let slot = out.entry(depth).or_insert_with(|| vec![0.0; pairs.len()]);
                for (k, &i) in batch_idx.iter().enumerate() {
                    slot[i] = values[k];
                }
            }
        }
        Ok(out)
    }

    /// Encodes and scores one query against passages.
    pub fn score(
        &mut self,
        query: &str,
        passages: &[&str],
        sub: &SubStructure,
        token_budget: usize,
    ) -> Result<Vec<f32>> {
        let pairs = passages
            .iter()
            .map(|p| self.encoder.encode(query, p, None))
            .collect::<models::Result<Vec<_>>>()?;
        self.score_pairs(&pairs, sub, token_budget)
    }
}

#[cfg(test)]
mod tests {
    use super::token_budget_batches;
    use models::{EncodedPair, Span};

    fn pair(len: usize) -> EncodedPair {
        EncodedPair {
            input_ids: vec![0; len],
            token_type_ids: vec![0; len],
            query: Span::default(),
            passage: Span::default(),
            prompt: None,
            score_pos: 0,
            truncated: false,
            keeps_end: false,
        }
    }

    #[test]
    fn batches_respect_the_budget_and_cover_every_pair() {
        let pairs: Vec<_> = [50, 10, 30, 200, 20, 40].iter().map(|&l| pair(l)).collect();
        let batches = token_budget_batches(&pairs, 100);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| pairs[i].len()).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= 100, "{b:?}");
        }
        // A pair longer than the budget still gets a batch of its own.
        assert!(batches.iter().any(|b| b == &vec![3]));
    }
}
