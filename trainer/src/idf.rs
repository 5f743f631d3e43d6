//! IDF-weighted query tokens for the max-sim readout (`model.query_weights = "idf"`).
//!
//! Max-sim averages each query token's best passage-token cosine, so "what", "is" and
//! "the" count as much as the query's rare terms. A deep layer's token states know which
//! terms matter from context; a shallow layer's are still close to the words, and its
//! exit scores far better when rare terms weigh more. On the untrained base (DL19
//! nDCG@10, isolated segments, `scripts/probe_idf_weights.py`), weighting query token t
//! by idf(t)^α lifts d2 from 0.4312 to 0.5388 at α = 1.5 and d4 from 0.5655 to 0.5773 at
//! α = 1, and does nothing at full depth (0.6538 at α = 0.5 against 0.6530 without). So
//! each depth's head learns its own exponent α_d, starting from 1, and the idf table
//! comes from the training passages.

use std::collections::{BTreeMap, HashSet};

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TrainerError};
use crate::merge::RowLayout;

/// The exponent every depth starts from.
pub const INITIAL_POWER: f32 = 1.0;

/// The idf table and each depth's exponent: query token t at depth d weighs
/// idf(t)^α_d = exp(α_d · ln idf(t)) in the max-sim mean.
#[derive(Debug, Clone)]
pub struct QueryIdf {
    /// ln idf(t) for every vocabulary id, `[V]`, with idf(t) = ln((N + 1) / (df(t) + 1)) + 1
    /// over N documents (≥ 1, so ln idf ≥ 0; ids never seen get the largest idf).
    pub log_idf: Tensor,
    /// Depth → α_d, `[1]`.
    pub power: BTreeMap<usize, Tensor>,
    /// β of idf merging (`MergeMode::Idf`): a passage token weighs idf(t)^β in its
    /// group. Fixed, not trained (the merge plan is built on the host).
    pub merge_power: f32,
}

impl QueryIdf {
    /// The idf table of `documents` (token ids; each document counts once per id) and
    /// exponent `INITIAL_POWER` at every depth of `depths`.
    pub fn from_documents<'a>(
        documents: impl IntoIterator<Item = &'a [u32]>,
        vocab_size: usize,
        depths: impl IntoIterator<Item = usize>,
        merge_power: f32,
        device: &Device,
    ) -> Result<Self> {
        let mut df = vec![0u64; vocab_size];
        let mut n = 0u64;
        for doc in documents {
            n += 1;
            let distinct: HashSet<u32> = doc.iter().copied().collect();
            for id in distinct {
                let slot = df.get_mut(id as usize).ok_or_else(|| {
                    TrainerError::Input(format!(
                        "query idf: token id {id} is outside the vocabulary of {vocab_size}"
                    ))
                })?;
                *slot += 1;
            }
        }
        if n == 0 {
            return Err(TrainerError::Input(
                "query idf: no training passages to count document frequencies on".into(),
            ));
        }
        let log_idf: Vec<f32> = df
            .iter()
            .map(|&d| {
                let idf = ((n as f64 + 1.0) / (d as f64 + 1.0)).ln() + 1.0;
                idf.ln() as f32
            })
            .collect();
        let power = depths
            .into_iter()
            .map(|d| Ok((d, Tensor::new(&[INITIAL_POWER], device)?)))
            .collect::<Result<_>>()?;
        Ok(QueryIdf {
            log_idf: Tensor::from_vec(log_idf, vocab_size, device)?,
            power,
            merge_power,
        })
    }

    /// idf(t)^β of every input position, `[B, T]` row-major: the weights of idf merging.
    pub fn merge_weights(&self, input_ids: &Tensor) -> Result<Vec<f32>> {
        let ids = input_ids.flatten_all()?;
        let log_idf = self.log_idf.index_select(&ids, 0)?;
        Ok((log_idf * self.merge_power as f64)?.exp()?.to_vec1()?)
    }

    /// Per row, ln idf of each query token, `[query len]`, read at the input positions
    /// (merging never moves query tokens: they come before the passage).
    pub fn query_log_idf(&self, input_ids: &Tensor, layout: &RowLayout) -> Result<Vec<Tensor>> {
        let (_, t) = input_ids.dims2()?;
        let mut rows = Vec::with_capacity(layout.query.len());
        for (row, span) in layout.query.iter().enumerate() {
            let (start, len) = crate::layers::clamp_span(span, t);
            let ids = input_ids.get(row)?.narrow(0, start, len)?;
            rows.push(self.log_idf.index_select(&ids, 0)?);
        }
        Ok(rows)
    }

    /// Per row, the query token weights at `depth`: exp(α_d · ln idf), `[query len]`.
    pub fn weights(&self, log_idf_rows: &[Tensor], depth: usize) -> Result<Vec<Tensor>> {
        let power = self.power.get(&depth).ok_or_else(|| {
            TrainerError::Input(format!("query idf: no exponent for depth {depth}"))
        })?;
        log_idf_rows
            .iter()
            .map(|l| Ok(l.broadcast_mul(power)?.exp()?))
            .collect()
    }

    /// Tensors under their adapters-file names.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![
            ("idf.log".to_string(), self.log_idf.clone()),
            (
                "idf.merge_power".to_string(),
                Tensor::new(&[self.merge_power], self.log_idf.device())?,
            ),
        ];
        for (d, p) in &self.power {
            out.push((format!("head.{d}.idf_power"), p.clone()));
        }
        Ok(out)
    }

    /// Reads the table and exponents back from an adapters file's tensors; `None` when the
    /// file has no idf table.
    pub fn from_tensors(
        tensors: &std::collections::HashMap<String, Tensor>,
        depths: impl IntoIterator<Item = usize>,
    ) -> Result<Option<Self>> {
        let Some(log_idf) = tensors.get("idf.log") else {
            return Ok(None);
        };
        let mut power = BTreeMap::new();
        for d in depths {
            let p = tensors.get(&format!("head.{d}.idf_power")).ok_or_else(|| {
                TrainerError::Input(format!(
                    "the adapters have an idf table but no exponent head.{d}.idf_power"
                ))
            })?;
            power.insert(d, p.to_dtype(DType::F32)?);
        }
        // Files written before idf merging existed have no β; they never merge by idf.
        let merge_power = match tensors.get("idf.merge_power") {
            Some(t) => t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0],
            None => 1.0,
        };
        Ok(Some(QueryIdf {
            log_idf: log_idf.to_dtype(DType::F32)?,
            power,
            merge_power,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::Span;

    /// Three documents: id 1 in all of them, id 2 in one, id 3 in none.
    #[test]
    fn rare_tokens_weigh_more_and_the_exponent_sharpens_them() {
        let docs: Vec<Vec<u32>> = vec![vec![1, 2, 2], vec![1], vec![1, 1]];
        let idf = QueryIdf::from_documents(
            docs.iter().map(|d| d.as_slice()),
            4,
            [2, 3],
            2.0,
            &Device::Cpu,
        )
        .unwrap();
        let table: Vec<f32> = idf.log_idf.to_vec1().unwrap();
        let expected = |df: f64| (((3.0 + 1.0) / (df + 1.0)).ln() + 1.0).ln() as f32;
        for (id, df) in [(1, 3.0), (2, 1.0), (3, 0.0)] {
            assert!((table[id] - expected(df)).abs() < 1e-6, "{table:?}");
        }
        // Row `[CLS] 1 2 3 [SEP]`: the query is ids 1, 2, 3.
        let ids = Tensor::new(&[[0u32, 1, 2, 3, 0]], &Device::Cpu).unwrap();
        let layout = RowLayout {
            seq_len: 5,
            lengths: vec![5],
            query: vec![Span { start: 1, len: 3 }],
            passage: vec![Span { start: 5, len: 0 }],
            score_pos: vec![0],
        };
        let rows = idf.query_log_idf(&ids, &layout).unwrap();
        let w: Vec<f32> = idf.weights(&rows, 2).unwrap()[0].to_vec1().unwrap();
        assert!(w[0] < w[1] && w[1] < w[2], "{w:?}");
        assert!((w[1] - table[2].exp()).abs() < 1e-5);
        let mut sharper = idf.clone();
        sharper
            .power
            .insert(2, Tensor::new(&[2f32], &Device::Cpu).unwrap());
        let s: Vec<f32> = sharper.weights(&rows, 2).unwrap()[0].to_vec1().unwrap();
        assert!(s[2] / s[0] > w[2] / w[0]);
        assert!(idf.weights(&rows, 4).is_err());
        // Merge weights: idf^β at every position, β = 2.
        let m = idf.merge_weights(&ids).unwrap();
        assert!((m[2] - (2.0 * table[2]).exp()).abs() < 1e-5, "{m:?}");
    }
}
