//! `mrank eval`: nDCG@10 and MRR@10 per sub-structure on a candidate file + qrels.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use models::{Configuration, Precision, SubStructure, SubStructureSpace};
use trainer::adapters::Adapters;
use trainer::data::{read_candidates, Qrels};
use trainer::eval::{evaluate, evaluate_baseline, Baseline};
use trainer::reranker::Reranker;

use crate::model_args::{resolve, ModelArgs};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Candidate lists (TREC-DL JSONL: qid, query, candidates[docid, text]).
    #[arg(long)]
    pub data: PathBuf,
    /// Judgments (TREC qrels: qid Q0 docid grade).
    #[arg(long)]
    pub qrels: PathBuf,
    /// `all`, `full`, `depths` (every depth at full width) or a comma-separated list of ids.
    #[arg(long, default_value = "all")]
    pub configs: String,
    /// Print exactly one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With `--json`: each configuration also lists every judged query's nDCG@10 and
    /// MRR@10 under `per_query` (as `trec_eval -q`), for paired comparisons
    /// (`scripts/compare_quality.py`).
    #[arg(long, requires = "json")]
    pub per_query: bool,
    /// Score with a reference instead of the re-ranker: `bm25` (the candidates' BM25
    /// order) or `bi-encoder` (cosine of the base model's mean-pooled embeddings; a
    /// trained model's adapters are not applied).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Merge mode at inference (`attention`, `uniform` or `idf`); default: the adapters'
    /// own. `idf` needs adapters trained with `model.query_weights = "idf"`.
    #[arg(long)]
    pub merge_mode: Option<String>,
    /// β of idf merging at inference (a passage token weighs idf^β in its group);
    /// default: the adapters' own.
    #[arg(long)]
    pub merge_idf_power: Option<f32>,
    /// Evaluate without stage 2's vertical and horizontal adapters (the
    /// "without compensation" ablation).
    #[arg(long)]
    pub without_compensation: bool,
    /// Score with query and passage in isolated segments (`model.isolate_segments`;
    /// for the untrained base, where it gives each depth's bi-encoder cosine). Implies
    /// uniform merging.
    #[arg(long)]
    pub isolate_segments: bool,
    /// Readout of the untrained base's unit heads (`span-product` or `max-sim`); only
    /// without adapters, since trained heads belong to the readout they were trained on.
    #[arg(long)]
    pub readout: Option<String>,
    /// Padded tokens per forward batch.
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// `candle` (the trainer's forward pass) or `onnx`: export the selected
    /// configurations to a temporary directory and score through ONNX Runtime, as
    /// serving does (same scores within 1e-4, several times faster on CPU).
    #[arg(long, default_value = "candle")]
    pub engine: String,
    /// Intra-op threads for `--engine onnx` (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// With `--engine onnx`: also write each configuration's ranking of the judged
    /// queries as a TREC run file, `DIR/<config>.run` (`qid Q0 docid rank score tag`),
    /// for `trec_eval` or score fusion.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// The configurations a `--configs` value names: `all` (every sub-structure of the
/// default space), `depths`, or a comma-separated list of ids, int8 ones included
/// (`full-int8`).
pub fn select_configs(
    spec: &str,
    num_layers: usize,
    min_depth: usize,
) -> Result<Vec<Configuration>> {
    let mut space = SubStructureSpace::default_for(num_layers);
    space.min_depth = min_depth;
    Ok(match spec {
        "all" => space
            .enumerate()
            .into_iter()
            .map(Configuration::f32)
            .collect(),
        "depths" => (min_depth..=num_layers)
            .map(|d| Configuration::f32(SubStructure::depth_only(d)))
            .collect(),
        _ => spec
            .split(',')
            .map(|id| Configuration::parse(id.trim(), num_layers, min_depth))
            .collect::<models::Result<Vec<_>>>()
            .context("--configs")?,
    })
}

/// `configs` for the candle forward, which has no int8: an int8 id is refused with
/// the engine that has it.
pub fn candle_configs(configs: &[Configuration], num_layers: usize) -> Result<Vec<Configuration>> {
    configs
        .iter()
        .map(|c| match c.precision {
            Precision::F32 => Ok(c.clone()),
            Precision::Int8 => anyhow::bail!(
                "{}: int8 configurations exist only as ONNX graphs; evaluate them with \
                 --engine onnx (needs the ONNX Runtime library: make setup)",
                c.id(num_layers)
            ),
        })
        .collect()
}

/// The inference-time changes `mrank eval`'s flags make to a model's adapters, the same
/// for both engines. `trained`: the adapters come from a file (not the base's unit heads).
fn apply_adapter_flags(
    adapters: &mut Adapters,
    args: &EvalArgs,
    name: &str,
    trained: bool,
) -> Result<()> {
    if let Some(mode) = &args.merge_mode {
        let parsed = trainer::adapters::parse_merge_mode(mode)
            .with_context(|| format!("--merge-mode {mode}: use attention, uniform or idf"))?;
        if parsed == trainer::MergeMode::Idf && adapters.heads.query_idf.is_none() {
            anyhow::bail!(
                "--merge-mode idf: {name} has no idf table (it was trained with \
                 model.query_weights = \"uniform\")"
            );
        }
        adapters.meta.merge_mode = mode.clone();
    }
    if let Some(beta) = args.merge_idf_power {
        if !(beta.is_finite() && beta >= 0.0) {
            anyhow::bail!("--merge-idf-power {beta}: must be a number ≥ 0");
        }
        let idf =
            adapters.heads.query_idf.as_mut().with_context(|| {
                format!("--merge-idf-power: {name} has no idf table to merge by")
            })?;
        idf.merge_power = beta;
    }
    if let Some(kind) = &args.readout {
        let readout = trainer::Readout::parse(kind)
            .filter(|r| r.reads_spans())
            .with_context(|| format!("--readout {kind}: use span-product or max-sim"))?;
        if trained {
            anyhow::bail!(
                "--readout {kind}: {name} has trained heads for readout {}; --readout applies \
                 to an untrained base only",
                adapters.meta.readout
            );
        }
        adapters.heads.readout = readout;
        adapters.meta.readout = readout.name().into();
    }
    if args.isolate_segments {
        // The candle engine also isolates its backbone and encoder; an export reads this.
        adapters.meta.isolate_segments = true;
        adapters.meta.merge_mode = "uniform".into();
    }
    if args.without_compensation {
        adapters.sets.retain(|name, _| name == "sd");
    }
    Ok(())
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (base, adapters_path, name) = resolve(&args.model)?;
    let queries = read_candidates(&args.data)?;
    let qrels = Qrels::read(&args.qrels)?;
    let unknown = qrels.unknown_queries(&queries);
    if unknown > 0 {
        eprintln!(
            "warning: {}: {unknown} judged queries are not in {}; they are skipped",
            args.qrels.display(),
            args.data.display()
        );
    }
    if !queries.iter().any(|q| qrels.by_query.contains_key(&q.qid)) {
        // Every metric would be a mean over nothing: an error, not a table of zeros.
        bail!(
            "{}: judges none of the {} queries of {}; are they files of the same query set?",
            args.qrels.display(),
            queries.len(),
            args.data.display()
        );
    }
    let trained = adapters_path.is_some();
    // Progress goes to stderr: with `--json` it is shown when a person watches (stderr
    // a terminal) and kept out of callers' captured logs otherwise.
    let progress = !args.json || std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Some(dir) = &args.run_dir {
        // Checked before the long part, so a bad path does not cost the evaluation.
        if args.engine != "onnx" || args.baseline.is_some() {
            bail!("--run-dir writes the re-ranker's rankings through ONNX Runtime: use it with --engine onnx and without --baseline");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--run-dir {}: cannot create it", dir.display()))?;
    }
    if let Some(kind) = &args.baseline {
        // A baseline scores the base itself, so the flags that change the re-ranker's
        // adapters would be silently ignored (or refused for the wrong reason).
        let flags = [
            ("--merge-mode", args.merge_mode.is_some()),
            ("--merge-idf-power", args.merge_idf_power.is_some()),
            ("--readout", args.readout.is_some()),
            ("--without-compensation", args.without_compensation),
        ];
        if let Some((flag, _)) = flags.iter().find(|(_, set)| *set) {
            anyhow::bail!(
                "{flag} does not apply to --baseline {kind}, which scores the base itself"
            );
        }
    }
    let mut results = match (args.baseline.as_deref(), args.engine.as_str()) {
        // ONNX Runtime needs only the adapters: the candle model is never loaded (for a
        // decoder family that would double the memory of the run).
        (None, "onnx") => {
            let checkpoint = models::Checkpoint::open(&base)
                .with_context(|| format!("cannot load model {name}"))?;
            let mut adapters = export::load_adapters(&checkpoint, adapters_path.as_deref())
                .with_context(|| format!("cannot load model {name}"))?;
            apply_adapter_flags(&mut adapters, &args, &name, trained)?;
            evaluate_onnx(
                &checkpoint,
                &base,
                &adapters,
                &args.configs,
                &queries,
                &qrels,
                args.model.max_length,
                args.threads,
                args.batch_tokens,
                progress,
                args.run_dir.as_deref(),
            )?
        }
        (None, "candle") | (Some(_), _) => {
            // A baseline is a reference row of the base itself: a trained model's
            // adapters (whose stage-1 deltas are merged into the weights at load) would
            // make `bi-encoder` the cosine of fine-tuned weights instead.
            let adapters = match args.baseline {
                Some(_) => None,
                None => adapters_path.as_deref(),
            };
            let mut reranker = Reranker::load(&base, adapters, args.model.max_length, &Device::Cpu)
                .with_context(|| format!("cannot load model {name}"))?;
            let trained = trained && adapters.is_some();
            apply_adapter_flags(&mut reranker.adapters, &args, &name, trained)?;
            if args.isolate_segments {
                reranker
                    .set_isolated_segments(true)
                    .with_context(|| format!("--isolate-segments on {name}"))?;
            }
            match args.baseline.as_deref() {
                None => {
                    let configs =
                        select_configs(&args.configs, reranker.num_layers(), reranker.min_depth())?;
                    let layers = reranker.num_layers();
                    evaluate(
                        &mut reranker,
                        &queries,
                        &qrels,
                        &candle_configs(&configs, layers)?,
                        args.batch_tokens,
                        progress,
                    )?
                }
                Some(kind) => {
                    let baseline = match kind {
                        "bm25" => Baseline::Bm25,
                        "bi-encoder" => Baseline::BiEncoder,
                        other => anyhow::bail!("--baseline {other}: use bm25 or bi-encoder"),
                    };
                    vec![evaluate_baseline(
                        baseline, &reranker, &queries, &qrels, progress,
                    )?]
                }
            }
        }
        (None, other) => anyhow::bail!("--engine {other}: use candle or onnx"),
    };
    if !args.per_query {
        for r in &mut results {
            r.per_query = None;
        }
    }
    if args.json {
        let out = serde_json::json!({ "model": name, "configs": results });
        println!("{out}");
    } else {
        println!(
            "model {name} on {} ({} queries judged)",
            args.data.display(),
            queries
                .iter()
                .filter(|q| qrels.by_query.contains_key(&q.qid))
                .count()
        );
        // FLOPs at the reference lengths, and over these pairs as they come (where a
        // passage cap saves what the data's passages allow).
        println!(
            "{:<20} {:>9} {:>9} {:>8} {:>13}",
            "config", "nDCG@10", "MRR@10", "FLOPs", "FLOPs (data)"
        );
        let percent = |v: Option<f64>| match v {
            Some(v) if v.is_finite() => format!("{:.1}%", 100.0 * v),
            _ => "-".to_string(),
        };
        for r in &results {
            println!(
                "{:<20} {:>9.4} {:>9.4} {:>8} {:>13}",
                r.id,
                r.ndcg10,
                r.mrr10,
                percent(Some(r.flops_ratio)),
                percent(r.flops_ratio_on_data)
            );
        }
    }
    Ok(())
}

/// `configs` of `adapters` exported to a temporary directory and loaded by ONNX
/// Runtime; the directory must outlive the runtime's sessions.
pub fn temporary_runtime(
    checkpoint: &models::Checkpoint,
    base: &std::path::Path,
    adapters: &trainer::adapters::Adapters,
    configs: Vec<models::Configuration>,
    max_length: usize,
    threads: usize,
) -> Result<(tempfile::TempDir, models::Runtime)> {
    let dir = tempfile::tempdir().context("cannot create a temporary export directory")?;
    export::export_with(
        checkpoint,
        adapters,
        &export::ExportRequest {
            model_dir: base,
            adapters: None,
            configs,
            out: dir.path(),
            merge_adapters: false,
            max_length,
        },
    )?;
    let runtime = models::Runtime::load(
        dir.path(),
        &models::runtime::RuntimeOptions {
            intra_threads: threads,
            ..Default::default()
        },
    )?;
    Ok((dir, runtime))
}

/// `--engine onnx`: the configurations `configs` names (`select_configs`) of `adapters`
/// (with any `--merge-mode` or `--without-compensation` change applied), exported to a
/// temporary directory and scored by ONNX Runtime; `checkpoint` is `base` already
/// opened by the caller.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_onnx(
    checkpoint: &models::Checkpoint,
    base: &std::path::Path,
    adapters: &trainer::adapters::Adapters,
    configs: &str,
    queries: &[trainer::data::QueryCandidates],
    qrels: &Qrels,
    max_length: usize,
    threads: usize,
    batch_tokens: usize,
    progress: bool,
    run_dir: Option<&std::path::Path>,
) -> Result<Vec<trainer::eval::ConfigQuality>> {
    let layers = checkpoint.config.dimensions().num_layers;
    let configs = select_configs(configs, layers, adapters.heads.min_depth().unwrap_or(1))?;
    let ids: Vec<String> = configs.iter().map(|c| c.id(layers)).collect();
    if progress {
        eprintln!("exporting {} configurations for ONNX Runtime", ids.len());
    }
    let (_export, runtime) =
        temporary_runtime(checkpoint, base, adapters, configs, max_length, threads)?;
    // One TREC run file per configuration, written query by query as scored, under a
    // `.partial` name until every query is in: a failed evaluation leaves no `.run`
    // file that looks complete.
    let mut runs = match run_dir {
        Some(dir) => ids
            .iter()
            .map(|id| {
                let path = dir.join(format!("{id}.run.partial"));
                std::fs::File::create(&path)
                    .map(|f| (std::io::BufWriter::new(f), path.clone()))
                    .with_context(|| format!("cannot create run file {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let results = export::measure::evaluate_runtime(
        &runtime,
        queries,
        qrels,
        &ids,
        batch_tokens,
        progress,
        |q, scores| {
            use std::io::Write;
            let docids: Vec<&str> = q.candidates.iter().map(|c| c.docid.as_str()).collect();
            for ((file, path), (id, scores)) in runs.iter_mut().zip(ids.iter().zip(scores)) {
                let lines = trainer::metrics::trec_run_lines(
                    &q.qid,
                    &docids,
                    scores,
                    &format!("mrank-{id}"),
                );
                file.write_all(lines.as_bytes())
                    .map_err(|source| export::ExportError::Io {
                        path: path.clone(),
                        source,
                    })?;
            }
            Ok(())
        },
    )?;
    for (mut file, path) in runs {
        use std::io::Write;
        file.flush()
            .with_context(|| format!("cannot write run file {}", path.display()))?;
        drop(file);
        let done = path.with_extension("");
        std::fs::rename(&path, &done)
            .with_context(|| format!("cannot rename {} to {}", path.display(), done.display()))?;
    }
    Ok(results)
}
