//! Evaluation: nDCG@10 and MRR@10 of every requested configuration on a candidate file
//! with judgments. Pairs are encoded once per query (and cut once per passage cap);
//! sub-structures that share width, cap and adapters are scored in one pass at their
//! deepest depth, reading every head on the way.

use std::collections::BTreeMap;
use std::io::Write;

use models::{pair_flops, Configuration, EncodedPair, Precision, Segments, SubStructure};
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
    /// FLOPs relative to full on the evaluated pairs as they come (each passage cut to
    /// the configuration's cap), where `flops_ratio` is at the reference lengths: the
    /// two differ for passage caps, whose saving depends on the passages' lengths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_ratio_on_data: Option<f64>,
    /// Each judged query's metrics by query id (`mrank eval --per-query`, as
    /// `trec_eval -q`): what a paired comparison of two models or configurations needs
    /// (`scripts/compare_quality.py`). `None` when not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_query: Option<BTreeMap<String, QueryQuality>>,
}

/// One query's nDCG@10 and MRR@10.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueryQuality {
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "mrr@10")]
    pub mrr10: f64,
}

/// One scorer's metrics over the judged queries: the means and each query's.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerMetrics {
    pub ndcg10: f64,
    pub mrr10: f64,
    pub per_query: BTreeMap<String, QueryQuality>,
}

impl ScorerMetrics {
    /// The figures of one configuration `id`, per-query ones included.
    pub fn into_quality(self, id: String, flops_ratio: f64) -> ConfigQuality {
        ConfigQuality {
            id,
            ndcg10: self.ndcg10,
            mrr10: self.mrr10,
            flops_ratio,
            flops_ratio_on_data: None,
            per_query: Some(self.per_query),
        }
    }
}

/// nDCG@10 and MRR@10 (grade ≥ 2 relevant) of `scorers` scorers over the queries
/// `qrels` judges (the others are skipped), mean and per query: `score` returns, for one
/// query, one score per candidate for each scorer. The loop every evaluator shares (the
/// candle forward, ONNX Runtime, the baselines); progress on stderr under `label`.
pub fn mean_metrics<E>(
    queries: &[QueryCandidates],
    qrels: &Qrels,
    scorers: usize,
    label: &str,
    progress: bool,
    mut score: impl FnMut(&QueryCandidates) -> std::result::Result<Vec<Vec<f32>>, E>,
) -> std::result::Result<Vec<ScorerMetrics>, E> {
    let judged: Vec<&QueryCandidates> = queries
        .iter()
        .filter(|q| qrels.by_query.contains_key(&q.qid))
        .collect();
    let mut sums = vec![(0.0, 0.0); scorers];
    let mut per_query = vec![BTreeMap::new(); scorers];
    let start = std::time::Instant::now();
    let mut pairs_done = 0usize;
    for (qi, q) in judged.iter().enumerate() {
        let judgments = &qrels.by_query[&q.qid];
        let docids: Vec<&str> = q.candidates.iter().map(|c| c.docid.as_str()).collect();
        let scores = score(q)?;
        // A scorer that returned fewer lists would be cut short by `zip` below.
        assert_eq!(scores.len(), scorers, "one score list per scorer");
        for ((sum, each), scores) in sums.iter_mut().zip(&mut per_query).zip(&scores) {
            let ranking = rank_by_score(&docids, scores);
            let ndcg10 = ndcg_at_k(&ranking, judgments, 10);
            let mrr10 = mrr_at_k(&ranking, judgments, 10, 2);
            sum.0 += ndcg10;
            sum.1 += mrr10;
            each.insert(q.qid.clone(), QueryQuality { ndcg10, mrr10 });
        }
        pairs_done += scorers * docids.len();
        if progress {
            let secs = start.elapsed().as_secs_f64();
            eprint!(
                "\r{label}: query {}/{} · {scorers} configs · {:.0} pairs/s · {:.0}s   ",
                qi + 1,
                judged.len(),
                pairs_done as f64 / secs.max(1e-9),
                secs
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    let n = judged.len().max(1) as f64;
    Ok(sums
        .into_iter()
        .zip(per_query)
        .map(|((ndcg, mrr), per_query)| ScorerMetrics {
            ndcg10: ndcg / n,
            mrr10: mrr / n,
            per_query,
        })
        .collect())
}

/// FLOPs of configurations over the pairs an evaluation scores (`add` each query's
/// pairs as they are encoded), relative to the full model's over the same pairs: where
/// `flops_ratio` counts the reference lengths, a passage cap saves what the data's
/// passages allow. With isolated segments each query is counted once per batch of its
/// pairs (`Segments::for_request`).
pub struct FlopsOnData<'a> {
    dims: models::Dimensions,
    configs: &'a [Configuration],
    isolated: bool,
    totals: Vec<f64>,
    full: f64,
}

impl<'a> FlopsOnData<'a> {
    pub fn new(dims: models::Dimensions, configs: &'a [Configuration], isolated: bool) -> Self {
        FlopsOnData {
            dims,
            configs,
            isolated,
            totals: vec![0.0; configs.len()],
            full: 0.0,
        }
    }

    /// Counts one query's pairs.
    pub fn add(&mut self, pairs: &[EncodedPair]) {
        let whole = SubStructure::full(self.dims.num_layers);
        let segments = Segments::for_request(self.isolated, pairs.len());
        for lengths in pairs.iter().map(EncodedPair::lengths) {
            self.full += pair_flops(&self.dims, lengths, segments, &whole);
            for (total, config) in self.totals.iter_mut().zip(self.configs) {
                *total += pair_flops(&self.dims, config.capped(lengths), segments, &config.sub);
            }
        }
    }

    /// One ratio per configuration, in order.
    pub fn ratios(&self) -> Vec<f64> {
        self.totals.iter().map(|t| t / self.full.max(1.0)).collect()
    }
}

/// One forward pass: the sub-structure run (at its members' deepest depth), the passage
/// cap it runs under, and the configurations (indices) it scores.
struct Pass {
    sub: SubStructure,
    passage_tokens: Option<usize>,
    members: Vec<usize>,
}

/// Groups configurations that one forward pass can score together.
fn pass_groups(reranker: &Reranker, configs: &[Configuration]) -> Vec<Pass> {
    type Key = (Option<usize>, usize, Vec<usize>, Vec<String>);
    let mut groups: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    for (i, c) in configs.iter().enumerate() {
        let key = (
            c.passage_tokens,
            c.sub.ratio,
            c.sub.compress_layers.clone(),
            reranker.adapters.active_sets(&c.sub),
        );
        groups.entry(key).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|((passage_tokens, ..), members)| {
            let deepest = members
                .iter()
                .map(|&i| configs[i].sub.depth)
                .max()
                .expect("non-empty group");
            let mut sub = configs[members[0]].sub.clone();
            sub.depth = deepest;
            Pass {
                sub,
                passage_tokens,
                members,
            }
        })
        .collect()
}

/// Evaluates f32 `configs` (the candle forward has no int8) on `queries` judged by
/// `qrels` (queries without judgments skipped). Progress goes to stderr when
/// `progress` is set.
pub fn evaluate(
    reranker: &mut Reranker,
    queries: &[QueryCandidates],
    qrels: &Qrels,
    configs: &[Configuration],
    token_budget: usize,
    progress: bool,
) -> Result<Vec<ConfigQuality>> {
    let layers = reranker.num_layers();
    if let Some(c) = configs.iter().find(|c| c.precision != Precision::F32) {
        return Err(crate::error::TrainerError::Input(format!(
            "{}: the candle forward computes f32 only; int8 configurations exist as ONNX \
             graphs (mrank eval --engine onnx)",
            c.id(layers)
        )));
    }
    let passes = pass_groups(reranker, configs);
    let isolated = reranker.encoder.isolated_segments();
    let mut on_data = FlopsOnData::new(reranker.backbone_dims(), configs, isolated);
    let metrics = mean_metrics(queries, qrels, configs.len(), "eval", progress, |q| {
        let pairs = q
            .candidates
            .iter()
            .map(|c| reranker.encoder.encode(&q.query, &c.text, None))
            .collect::<models::Result<Vec<_>>>()?;
        on_data.add(&pairs);
        let mut capped: BTreeMap<usize, Vec<EncodedPair>> = BTreeMap::new();
        let mut scores = vec![Vec::new(); configs.len()];
        for pass in &passes {
            let pairs = match pass.passage_tokens {
                None => &pairs,
                Some(cap) => capped
                    .entry(cap)
                    .or_insert_with(|| pairs.iter().map(|p| p.with_passage_cap(cap)).collect()),
            };
            let by_depth = reranker.score_pairs_all_depths(pairs, &pass.sub, token_budget)?;
            for &i in &pass.members {
                // Indexed, not taken: an id listed twice reads the same depth twice.
                scores[i] = by_depth
                    .get(&configs[i].sub.depth)
                    .cloned()
                    .unwrap_or_default();
            }
        }
        Ok::<_, crate::error::TrainerError>(scores)
    })?;
    let dims = reranker.backbone_dims();
    let lengths = reranker.encoder.reference_lengths();
    let segments = Segments::reference(isolated);
    let full = pair_flops(
        &dims,
        lengths,
        segments,
        &SubStructure::full(dims.num_layers),
    );
    Ok(configs
        .iter()
        .zip(metrics)
        .zip(on_data.ratios())
        .map(|((c, m), on_data)| {
            let flops = pair_flops(&dims, c.capped(lengths), segments, &c.sub);
            ConfigQuality {
                flops_ratio_on_data: Some(on_data),
                ..m.into_quality(c.id(dims.num_layers), flops / full)
            }
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
    let metrics = mean_metrics(queries, qrels, 1, "baseline", progress, |q| {
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
        Ok::<_, crate::error::TrainerError>(vec![scores])
    })?;
    let id = match baseline {
        Baseline::Bm25 => "bm25",
        Baseline::BiEncoder => "bi-encoder-cosine",
    };
    let metrics = metrics.into_iter().next().expect("one scorer");
    Ok(metrics.into_quality(id.into(), f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Candidate;

    fn query(qid: &str, docids: &[&str]) -> QueryCandidates {
        QueryCandidates {
            qid: qid.into(),
            query: "q".into(),
            candidates: docids
                .iter()
                .map(|d| Candidate {
                    docid: d.to_string(),
                    text: String::new(),
                    bm25_rank: None,
                    bm25_score: None,
                })
                .collect(),
        }
    }

    /// Two scorers over one judged and one unjudged query: the unjudged one is never
    /// scored, the right order gets 1.0, the reversed order the hand-computed values.
    #[test]
    fn mean_metrics_averages_over_judged_queries_only() {
        let queries = vec![query("a", &["d1", "d2", "d3"]), query("b", &["x"])];
        let mut qrels = Qrels::default();
        qrels
            .by_query
            .insert("a".into(), [("d1".to_string(), 2u32)].into_iter().collect());
        let mut scored = Vec::new();
        let metrics = mean_metrics(&queries, &qrels, 2, "test", false, |q| {
            scored.push(q.qid.clone());
            Ok::<_, ()>(vec![vec![3.0, 2.0, 1.0], vec![1.0, 2.0, 3.0]])
        })
        .unwrap();
        assert_eq!(scored, ["a"]);
        assert_eq!((metrics[0].ndcg10, metrics[0].mrr10), (1.0, 1.0));
        // d1 at rank 3: DCG = (2^2 - 1) / log2(4), ideal (2^2 - 1) / log2(2); MRR 1/3.
        assert!((metrics[1].ndcg10 - 0.5).abs() < 1e-12, "{:?}", metrics[1]);
        assert!(
            (metrics[1].mrr10 - 1.0 / 3.0).abs() < 1e-12,
            "{:?}",
            metrics[1]
        );
        // Per query: only the judged query, with the same figures as the mean of one.
        let only: Vec<&String> = metrics[1].per_query.keys().collect();
        assert_eq!(only, ["a"]);
        assert_eq!(
            metrics[1].per_query["a"],
            QueryQuality {
                ndcg10: metrics[1].ndcg10,
                mrr10: metrics[1].mrr10
            }
        );
    }
}
