//! Measurements recorded in the manifest: the latency of a reference batch per
//! configuration and, given judged data, dev nDCG@10 and MRR@10, both through ONNX
//! Runtime (what serving runs).

use std::time::Instant;

use models::{Configuration, EncodedPair, PaddedBatch, Runtime, SubStructure};
use trainer::data::{Qrels, QueryCandidates};
use trainer::eval::{mean_metrics, ConfigQuality};

use crate::error::Result;

/// Pairs per reference batch (all of one query, which is what FLOPs per pair assume).
pub const REFERENCE_BATCH: usize = models::flops::REFERENCE_BATCH_PAIRS;

/// Interleaved rounds of the reference-batch latency at export.
pub const DEFAULT_LATENCY_ROUNDS: usize = 7;

/// A batch of `REFERENCE_BATCH` pairs at the manifest's reference lengths (query and
/// passage made of repeated ordinary words, so every token is a real one).
pub fn reference_batch(runtime: &Runtime) -> Result<PaddedBatch> {
    let lengths = &runtime.manifest.reference_lengths;
    let query = vec!["river"; lengths.query].join(" ");
    let passage = vec!["water"; lengths.passage].join(" ");
    let pair = runtime.encoder.encode(&query, &passage, None)?;
    let pairs: Vec<EncodedPair> = vec![pair; REFERENCE_BATCH];
    Ok(PaddedBatch::new(&pairs, runtime.encoder.pad_id))
}

/// Median milliseconds of the reference batch for each of `ids`, timed in `rounds`
/// interleaved rounds (one run of every configuration per round, after one warm-up
/// each). Interleaving spreads a slow spell of a shared machine over every
/// configuration instead of one; the frontier, which picks the served rungs, compares
/// these figures, and neighbours on it are often within 10% of each other.
pub fn reference_latencies(
    runtime: &Runtime,
    ids: &[String],
    rounds: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let batch = reference_batch(runtime)?;
    for id in ids {
        runtime.run(id, &batch)?;
    }
    let rounds = rounds.max(1);
    let mut times = vec![Vec::with_capacity(rounds); ids.len()];
    for round in 0..rounds {
        progress(round + 1, rounds);
        for (id, t) in ids.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            runtime.run(id, &batch)?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Records every manifest configuration's reference-batch latency
/// (`reference_latencies`, `DEFAULT_LATENCY_ROUNDS` rounds) with a description of the
/// batch, printing progress on stderr.
pub fn record_latencies(runtime: &Runtime, manifest: &mut models::Manifest) -> Result<()> {
    let ids: Vec<String> = manifest.configs.iter().map(|c| c.id.clone()).collect();
    let rounds = DEFAULT_LATENCY_ROUNDS;
    let latencies = reference_latencies(runtime, &ids, rounds, |r, n| {
        eprint!("\rlatency of {} configurations: round {r}/{n}", ids.len())
    })?;
    eprintln!();
    let lengths = &manifest.reference_lengths;
    let batch = format!(
        "{REFERENCE_BATCH} pairs of {}+{} tokens, median of {rounds} interleaved rounds",
        lengths.query, lengths.passage
    );
    for (c, ms) in manifest.configs.iter_mut().zip(latencies) {
        c.latency_ms = Some(ms);
        c.reference_batch = Some(match c.passage_tokens {
            Some(cap) if cap < lengths.passage => {
                format!("{batch}, passages cut to {cap} tokens")
            }
            _ => batch.clone(),
        });
    }
    Ok(())
}

/// nDCG@10 and MRR@10 of each loaded configuration in `ids` (queries without
/// judgments skipped), scored through ONNX Runtime. Each judged query's scores (one
/// list per id, in candidate order) go to `sink` as they come: `mrank eval --run-dir`
/// writes them as TREC run files.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_runtime(
    runtime: &Runtime,
    queries: &[QueryCandidates],
    qrels: &Qrels,
    ids: &[String],
    token_budget: usize,
    progress: bool,
    mut sink: impl FnMut(&QueryCandidates, &[Vec<f32>]) -> Result<()>,
) -> Result<Vec<ConfigQuality>> {
    // The configurations as the manifest describes them, for their FLOPs on this data.
    let entries = ids
        .iter()
        .map(|id| {
            runtime.config(id).map(|c| &c.entry).ok_or_else(|| {
                models::ModelsError::Runtime(format!("configuration {id:?} is not loaded"))
            })
        })
        .collect::<models::Result<Vec<_>>>()?;
    let configs: Vec<Configuration> = entries.iter().map(|e| configuration(e)).collect();
    let model_config = runtime.dir.join(&runtime.manifest.model_config);
    let dims = models::ModelConfig::from_file(&model_config)?.dimensions();
    let isolated = runtime.encoder.isolated_segments();
    let mut on_data = trainer::eval::FlopsOnData::new(dims, &configs, isolated);
    let metrics = mean_metrics(queries, qrels, ids.len(), "eval (onnx)", progress, |q| {
        let texts: Vec<&str> = q.candidates.iter().map(|c| c.text.as_str()).collect();
        let pairs = runtime
            .encoder
            .encode_request(&q.query, &texts, None, false)?
            .pairs;
        on_data.add(&pairs);
        let scores = ids
            .iter()
            .map(|id| Ok(runtime.score_pairs(id, &pairs, token_budget)?))
            .collect::<Result<Vec<_>>>()?;
        sink(q, &scores)?;
        Ok::<_, crate::ExportError>(scores)
    })?;
    Ok(ids
        .iter()
        .zip(metrics)
        .zip(entries.iter().zip(on_data.ratios()))
        .map(|((id, m), (entry, on_data))| ConfigQuality {
            flops_ratio_on_data: Some(on_data),
            ..m.into_quality(id.clone(), entry.flops_ratio)
        })
        .collect())
}

/// The configuration a manifest entry describes.
fn configuration(entry: &models::manifest::ConfigEntry) -> Configuration {
    Configuration {
        sub: SubStructure {
            depth: entry.depth,
            ratio: entry.ratio,
            compress_layers: entry.compress_layers.clone(),
        },
        precision: entry.precision,
        passage_tokens: entry.passage_tokens,
    }
}
