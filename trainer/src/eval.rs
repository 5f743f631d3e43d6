//! Evaluation: nDCG@10 and MRR@10 of every requested sub-structure on a candidate file
//! with judgments. Pairs are encoded once per query; sub-structures that share width and
//! adapters are scored in one pass at their deepest depth, reading every head on the way.

use std::collections::BTreeMap;
use std::io::Write;

use models::{pair_flops, SubStructure};
use serde::Serialize;

use crate::data::{Qrels, QueryCandidates};
use crate::error::Result;
use crate::metrics::{mrr_at_k, ndcg_at_k, rank_by_score};
use crate::reranker::Reranker;

#[derive(Debug, Clone, Serialize)]
pub struct ConfigQuality {
    pub id: String,
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "mrr@10")]
    pub mrr10: f64,
    pub flops_ratio: f64,
}

/// Groups sub-structures that one forward pass can score together.
fn pass_groups(reranker: &Reranker, subs: &[SubStructure]) -> Vec<(SubStructure, Vec<usize>)> {
    let mut groups: BTreeMap<(usize, Vec<usize>, Vec<String>), Vec<usize>> = BTreeMap::new();
    for (i, s) in subs.iter().enumerate() {
        let key = (
            s.ratio,
            s.compress_layers.clone(),
            reranker.adapters.active_sets(s),
        );
        groups.entry(key).or_default().push(i);
    }
    groups
        .into_values()
        .map(|members| {
            let deepest = members
                .iter()
                .map(|&i| subs[i].depth)
                .max()
                .expect("non-empty group");
            let mut sub = subs[members[0]].clone();
            sub.depth = deepest;
            (sub, members)
        })
        .collect()
}

/// Evaluates `subs` on `queries` judged by `qrels` (queries without judgments skipped).
/// Progress goes to stderr when `progress` is set.
pub fn evaluate(
    reranker: &mut Reranker,
    queries: &[QueryCandidates],
    qrels: &Qrels,
    subs: &[SubStructure],
    token_budget: usize,
    progress: bool,
) -> Result<Vec<ConfigQuality>> {
    let judged: Vec<&QueryCandidates> = queries
        .iter()
        .filter(|q| qrels.by_query.contains_key(&q.qid))
        .collect();
    let groups = pass_groups(reranker, subs);
    let mut ndcg = vec![0.0; subs.len()];
    let mut mrr = vec![0.0; subs.len()];
    let start = std::time::Instant::now();
    let mut pairs_done = 0usize;
    for (qi, q) in judged.iter().enumerate() {
        let judgments = &qrels.by_query[&q.qid];
        let pairs = q
            .candidates
            .iter()
            .map(|c| reranker.encoder.encode(&q.query, &c.text, None))
            .collect::<models::Result<Vec<_>>>()?;
        let docids: Vec<&str> = q.candidates.iter().map(|c| c.docid.as_str()).collect();
        for (sub, members) in &groups {
            let by_depth = reranker.score_pairs_all_depths(&pairs, sub, token_budget)?;
            for &i in members {
                let ranking = rank_by_score(&docids, &by_depth[&subs[i].depth]);
                ndcg[i] += ndcg_at_k(&ranking, judgments, 10);
                mrr[i] += mrr_at_k(&ranking, judgments, 10, 2);
            }
            pairs_done += pairs.len();
        }
        if progress {
            let secs = start.elapsed().as_secs_f64();
            eprint!(
                "\reval: query {}/{} · {} passes · {:.0} pairs/s · {:.0}s   ",
                qi + 1,
                judged.len(),
                groups.len(),
                pairs_done as f64 / secs.max(1e-9),
                secs
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    let dims = reranker.backbone_dims();
    let lengths = reranker.encoder.reference_lengths();
    let full = pair_flops(&dims, lengths, &SubStructure::full(dims.num_layers));
    let n = judged.len().max(1) as f64;
    Ok(subs
        .iter()
        .enumerate()
        .map(|(i, s)| ConfigQuality {
            id: s.id(dims.num_layers),
            ndcg10: ndcg[i] / n,
            mrr10: mrr[i] / n,
            flops_ratio: pair_flops(&dims, lengths, s) / full,
        })
        .collect())
}

/// Reference scorers that need no trained adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The candidates' BM25 order.
    Bm25,
    /// Cosine of the base model's own mean-pooled embeddings (what the weights score
    /// as the bi-encoder they were trained as).
    BiEncoder,
}

/// nDCG@10 and MRR@10 of a baseline; `reranker` supplies the base weights for `BiEncoder`.
pub fn evaluate_baseline(
    baseline: Baseline,
    reranker: &Reranker,
    queries: &[QueryCandidates],
    qrels: &Qrels,
    progress: bool,
) -> Result<ConfigQuality> {
    let judged: Vec<&QueryCandidates> = queries
        .iter()
        .filter(|q| qrels.by_query.contains_key(&q.qid))
        .collect();
    let (mut ndcg, mut mrr) = (0.0, 0.0);
    let start = std::time::Instant::now();
    for (qi, q) in judged.iter().enumerate() {
        let judgments = &qrels.by_query[&q.qid];
        let docids: Vec<&str> = q.candidates.iter().map(|c| c.docid.as_str()).collect();
        let scores: Vec<f32> = match baseline {
            Baseline::Bm25 => q
                .candidates
                .iter()
                .map(|c| -(c.bm25_rank.unwrap_or(u32::MAX) as f32))
                .collect(),
            Baseline::BiEncoder => {
                let texts: Vec<&str> = q.candidates.iter().map(|c| c.text.as_str()).collect();
                crate::biencoder::cosine_scores(
                    reranker.backbone.as_ref(),
                    &reranker.encoder,
                    &q.query,
                    &texts,
                    reranker.encoder.max_length,
                    &candle_core::Device::Cpu,
                )?
            }
        };
        let ranking = rank_by_score(&docids, &scores);
        ndcg += ndcg_at_k(&ranking, judgments, 10);
        mrr += mrr_at_k(&ranking, judgments, 10, 2);
        if progress {
            eprint!(
                "\rbaseline: query {}/{} · {:.0}s   ",
                qi + 1,
                judged.len(),
                start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    let n = judged.len().max(1) as f64;
    let id = match baseline {
        Baseline::Bm25 => "bm25",
        Baseline::BiEncoder => "bi-encoder-cosine",
    };
    Ok(ConfigQuality {
        id: id.into(),
        ndcg10: ndcg / n,
        mrr10: mrr / n,
        flops_ratio: f64::NAN,
    })
}
