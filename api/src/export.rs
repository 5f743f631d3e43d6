//! `mrank export`: one ONNX graph per configuration plus `manifest.json`, with each
//! configuration's reference-batch latency and, given judged data, its dev nDCG@10.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use export::{export, measure, ExportRequest};
use models::runtime::RuntimeOptions;
use models::{Manifest, Runtime};
use trainer::data::{read_candidates, Qrels, QueryCandidates};

use crate::model_args::{resolve, ModelArgs};

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// `all`, `frontier` (export all, keep the quality/cost frontier), `depths`, or a
    /// comma-separated list of ids (`full-int8` names an int8 graph).
    #[arg(long, default_value = "all")]
    pub configs: String,
    /// Also export an int8 twin of every selected f32 configuration (projections as
    /// 8-bit integer products; `models::precision`).
    #[arg(long)]
    pub int8: bool,
    /// Also export a copy of every selected configuration (int8 twins included) whose
    /// passages are cut to each of these token counts, e.g. `64,96` (`full-p64`: the
    /// first 64 passage tokens; the copies run their twins' graphs).
    #[arg(long, value_delimiter = ',')]
    pub passage_caps: Vec<usize>,
    /// Output directory (graphs, weights.bin, tokenizer, manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Fold each configuration's adapters into its own weights instead of low-rank
    /// branches over shared base weights (more memory per configuration).
    #[arg(long)]
    pub merge_adapters: bool,
    /// Judged dev data: records each configuration's nDCG@10 in the manifest.
    #[arg(long, requires = "qrels")]
    pub data: Option<PathBuf>,
    #[arg(long, requires = "data")]
    pub qrels: Option<PathBuf>,
    /// Skip the reference-batch latency measurement.
    #[arg(long)]
    pub no_latency: bool,
    /// Intra-op threads for the measurements (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(args: ExportArgs) -> Result<()> {
    // The dev data is read first: a bad line must fail before minutes of export.
    let dev = match (&args.data, &args.qrels) {
        (Some(data), Some(qrels)) => Some((read_candidates(data)?, Qrels::read(qrels)?)),
        _ => None,
    };
    let (base, adapters, name) = resolve(&args.model)?;
    let checkpoint = models::Checkpoint::open(&base)?;
    let dims = checkpoint.config.dimensions();
    let loaded = export::load_adapters(&checkpoint, adapters.as_deref())?;
    let min_depth = loaded.heads.min_depth().unwrap_or(1);
    let spec = if args.configs == "frontier" {
        "all"
    } else {
        args.configs.as_str()
    };
    let mut configs = crate::eval::select_configs(spec, dims.num_layers, min_depth)?;
    if args.int8 {
        models::precision::add_int8_twins(&mut configs);
    }
    if let Some(zero) = args.passage_caps.iter().find(|&&n| n == 0) {
        bail!("--passage-caps {zero}: a cap keeps at least one passage token");
    }
    models::precision::add_passage_caps(&mut configs, &args.passage_caps);
    eprintln!(
        "export: {name} → {} ({} configurations)",
        args.out.display(),
        configs.len()
    );
    let manifest = export::export_with(
        &checkpoint,
        &loaded,
        &ExportRequest {
            model_dir: &base,
            adapters: adapters.as_deref(),
            configs,
            out: &args.out,
            merge_adapters: args.merge_adapters,
            max_length: args.model.max_length,
        },
    )?;
    let _ = export;
    let manifest = measure_into(&args.out, manifest, &args, dev.as_ref())?;
    let manifest = if args.configs == "frontier" {
        keep_frontier(&args.out, manifest)?
    } else {
        manifest
    };
    print_manifest(&manifest);
    eprintln!(
        "wrote {}",
        args.out.join(models::manifest::MANIFEST_FILE).display()
    );
    Ok(())
}

/// Adds latency and dev quality to a fresh export and marks the frontier.
fn measure_into(
    dir: &Path,
    mut manifest: Manifest,
    args: &ExportArgs,
    dev: Option<&(Vec<QueryCandidates>, Qrels)>,
) -> Result<Manifest> {
    if args.no_latency && dev.is_none() {
        return Ok(manifest);
    }
    let runtime = Runtime::load(
        dir,
        &RuntimeOptions {
            intra_threads: args.threads,
            ..Default::default()
        },
    )?;
    if !args.no_latency {
        measure::record_latencies(&runtime, &mut manifest)?;
    }
    if let Some((queries, qrels)) = dev {
        let ids = runtime.config_ids();
        // Batched as the server batches (int8 scores depend on their batch).
        let quality = measure::evaluate_runtime(
            &runtime,
            queries,
            qrels,
            &ids,
            crate::serve::DEFAULT_BATCH_TOKENS,
            true,
            |_, _| Ok(()),
        )?;
        for q in quality {
            if let Some(c) = manifest.configs.iter_mut().find(|c| c.id == q.id) {
                c.ndcg_at_10 = Some(q.ndcg10);
            }
        }
    }
    manifest.mark_frontier();
    manifest.write(dir)?;
    Ok(manifest)
}

/// Drops the configurations off the frontier and the graphs none of the rest runs (the
/// shared weights stay: every graph uses them). Entries that bound a kept
/// configuration's rank (`Manifest::ranking_quality`) stay off the frontier, so that
/// the server ranks the kept ones as the export did: a cap's longer reads of the same
/// graph (no extra file) and an int8 twin's f32 configuration (its graph stays on disk;
/// the server loads only the frontier).
pub fn keep_frontier(dir: &Path, mut manifest: Manifest) -> Result<Manifest> {
    let configs = &manifest.configs;
    let mut stays: Vec<bool> = configs.iter().map(|c| c.frontier).collect();
    // What bounds a kept entry may itself be bounded (an int8 cap's f32 twin is a cap):
    // add bounds until none is missing.
    loop {
        let mut added = false;
        for i in 0..configs.len() {
            if !stays[i] {
                continue;
            }
            for j in manifest.rank_bounds(&configs[i]) {
                if !stays[j] {
                    stays[j] = true;
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }
    let kept_graphs: std::collections::BTreeSet<&str> = configs
        .iter()
        .zip(&stays)
        .filter(|(_, &s)| s)
        .map(|(c, _)| c.graph.as_str())
        .collect();
    let unused: std::collections::BTreeSet<&str> = configs
        .iter()
        .map(|c| c.graph.as_str())
        .filter(|g| !kept_graphs.contains(*g))
        .collect();
    for graph in unused {
        let path = dir.join(graph);
        std::fs::remove_file(&path)
            .with_context(|| format!("{}: cannot remove", path.display()))?;
    }
    let mut flags = stays.into_iter();
    manifest.configs.retain(|_| flags.next().unwrap_or(false));
    if !manifest.configs.iter().any(|c| c.frontier) {
        bail!("no configuration on the frontier; this cannot happen with a non-empty export");
    }
    manifest.write(dir)?;
    Ok(manifest)
}

pub fn print_manifest(m: &Manifest) {
    println!(
        "{:<20} {:>5} {:>5} {:>10} {:>9} {:>11} {:>8}",
        "config", "depth", "ratio", "flops", "ndcg@10", "latency_ms", "frontier"
    );
    for c in &m.configs {
        println!(
            "{:<20} {:>5} {:>5} {:>10.3} {:>9} {:>11} {:>8}",
            c.id,
            c.depth,
            c.ratio,
            c.flops_ratio,
            c.ndcg_at_10
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into()),
            c.latency_ms
                .map(|v| format!("{v:.1}"))
                .unwrap_or("-".into()),
            if c.frontier { "yes" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph several configurations run (a passage cap and its uncapped twin) stays
    /// when only one of them is on the frontier; graphs of none go.
    #[test]
    fn keep_frontier_keeps_a_graph_any_kept_configuration_runs() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |id: &str, graph: &str, frontier: bool| models::manifest::ConfigEntry {
            id: id.into(),
            depth: 2,
            ratio: 1,
            compress_layers: Vec::new(),
            passage_tokens: id.contains("-p").then_some(8),
            precision: models::Precision::F32,
            graph: graph.into(),
            flops_per_pair: 1.0,
            flops_ratio: 1.0,
            shared: Vec::new(),
            ndcg_at_10: None,
            latency_ms: None,
            reference_batch: None,
            frontier,
        };
        let manifest = Manifest {
            format: models::manifest::MANIFEST_FORMAT.into(),
            model: "test".into(),
            family: "bert".into(),
            architecture: "bert".into(),
            num_layers: 2,
            hidden_size: 4,
            max_length: 64,
            readout: "max-sim".into(),
            merge_mode: "uniform".into(),
            inputs: Vec::new(),
            tokenizer: "tokenizer.json".into(),
            model_config: "config.json".into(),
            shared_weights: None,
            reference_lengths: models::manifest::ReferenceLengths {
                query: 32,
                passage: 128,
            },
            configs: vec![
                entry("full", "full.onnx", false),
                entry("full-p8", "full.onnx", true),
                entry("d1", "d1.onnx", false),
            ],
        };
        for g in ["full.onnx", "d1.onnx"] {
            std::fs::write(dir.path().join(g), b"graph").unwrap();
        }
        let kept = keep_frontier(dir.path(), manifest).unwrap();
        // full-p8 serves; full stays as an entry off the frontier (it bounds the cap's
        // rank), d1 goes with its graph.
        let ids: Vec<(&str, bool)> = kept
            .configs
            .iter()
            .map(|c| (c.id.as_str(), c.frontier))
            .collect();
        assert_eq!(ids, [("full", false), ("full-p8", true)]);
        assert!(dir.path().join("full.onnx").exists());
        assert!(!dir.path().join("d1.onnx").exists());

        // An int8 cap on the frontier keeps its f32 twin (a cap too) with its graph, and
        // the twin's own longer read: every entry that bounds its rank.
        let dir = tempfile::tempdir().unwrap();
        let int8 = |mut e: models::manifest::ConfigEntry| {
            e.precision = models::Precision::Int8;
            e
        };
        let mut manifest = kept;
        manifest.configs = vec![
            entry("full", "full.onnx", false),
            entry("full-p8", "full.onnx", false),
            int8(entry("full-int8", "full-int8.onnx", false)),
            int8(entry("full-p8-int8", "full-int8.onnx", true)),
            models::manifest::ConfigEntry {
                depth: 1,
                ..entry("d1", "d1.onnx", false)
            },
        ];
        for g in ["full.onnx", "full-int8.onnx", "d1.onnx"] {
            std::fs::write(dir.path().join(g), b"graph").unwrap();
        }
        let kept = keep_frontier(dir.path(), manifest).unwrap();
        let ids: Vec<&str> = kept.configs.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["full", "full-p8", "full-int8", "full-p8-int8"]);
        assert!(dir.path().join("full.onnx").exists());
        assert!(dir.path().join("full-int8.onnx").exists());
        assert!(!dir.path().join("d1.onnx").exists());
    }
}
