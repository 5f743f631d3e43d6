//! Export: one ONNX graph per sub-structure plus the manifest of their cost and quality
//! (DESIGN.md "Export"). Base weights (with stage 1's `sd` folded in) go once into a
//! shared external-data file; each configuration's stage-2 adapters stay low-rank
//! branches inside its graph, or are folded into its own weights on request.

pub mod blocks;
pub mod error;
pub mod families;
pub mod forward;
pub mod graph;
pub mod measure;
pub mod onnx;
pub mod weights;

use std::path::{Path, PathBuf};

use models::manifest::{
    ConfigEntry, Manifest, ReferenceLengths, SharedTensor, SharedWeights, MANIFEST_FORMAT,
};
use models::{pair_flops, Checkpoint, Configuration, ModelConfig, SubStructure};
use trainer::adapters::Adapters;

pub use error::{ExportError, Result};

use families::GraphFamily;
use graph::{GraphBuilder, WeightStore};
use weights::ModelWeights;

pub const SHARED_WEIGHTS_FILE: &str = "weights.bin";

/// Bumped whenever graphs change for the same inputs, so cached exports (the embedded
/// default's) are rebuilt.
pub const EXPORTER_REVISION: u32 = 6;

/// What to export.
pub struct ExportRequest<'a> {
    pub model_dir: &'a Path,
    /// Adapters from `mrank train`; `None` exports the untrained span-product heads.
    pub adapters: Option<&'a Path>,
    /// Sub-structures at a precision (`full`, `d4-r2@2`, `full-int8`, ...).
    pub configs: Vec<Configuration>,
    pub out: &'a Path,
    /// Fold each configuration's adapters into its own weights (no shared base).
    pub merge_adapters: bool,
    pub max_length: usize,
}

/// The graph family of a checkpoint.
pub fn graph_family(config: &ModelConfig) -> Result<Box<dyn GraphFamily>> {
    Ok(match config {
        ModelConfig::Bert(c) => Box::new(families::bert::BertGraph { config: c.clone() }),
        ModelConfig::Llama(c) => Box::new(families::llama::LlamaGraph::new(c)?),
        ModelConfig::Gemma2(c) => Box::new(families::gemma2::Gemma2Graph { config: c.clone() }),
    })
}

/// Loads adapters for a checkpoint (or the untrained heads), refusing another model's.
pub fn load_adapters(checkpoint: &Checkpoint, adapters: Option<&Path>) -> Result<Adapters> {
    Ok(Adapters::for_base(
        checkpoint,
        adapters,
        &candle_core::Device::Cpu,
    )?)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the graphs, the shared weights, the tokenizer and config, and the manifest
/// (without latency or quality: `measure` adds those).
pub fn export(req: &ExportRequest) -> Result<Manifest> {
    let checkpoint = Checkpoint::open(req.model_dir)?;
    let adapters = load_adapters(&checkpoint, req.adapters)?;
    export_with(&checkpoint, &adapters, req)
}

pub fn export_with(
    checkpoint: &Checkpoint,
    adapters: &Adapters,
    req: &ExportRequest,
) -> Result<Manifest> {
    let family = graph_family(&checkpoint.config)?;
    let dims = checkpoint.config.dimensions();
    let readout = adapters.heads.readout;
    let isolated = adapters.meta.isolate_segments;
    if isolated && (!matches!(checkpoint.config, ModelConfig::Bert(_)) || !readout.reads_spans()) {
        return Err(ExportError::Input(format!(
            "the adapters isolate query and passage segments, which needs a bert checkpoint \
             and a span readout, span-product or max-sim (this is {} with {})",
            checkpoint.config.variant_name(),
            readout.name()
        )));
    }
    let mode = adapters.merge_mode();
    let min_depth = adapters.heads.min_depth().unwrap_or(1);
    for config in &req.configs {
        config
            .sub
            .validate(dims.num_layers, min_depth)
            .map_err(|m| {
                ExportError::Input(format!("configuration {}: {m}", config.id(dims.num_layers)))
            })?;
    }
    prepare_out(req.out, &checkpoint.dir, req.adapters)?;
    let encoder =
        models::PairEncoder::new(checkpoint, req.max_length)?.with_isolated_segments(isolated)?;
    let lengths = encoder.reference_lengths();
    let segments = models::Segments::reference(isolated);
    let full_flops = pair_flops(
        &dims,
        lengths,
        segments,
        &SubStructure::full(dims.num_layers),
    );
    let mut store = WeightStore::new(SHARED_WEIGHTS_FILE);
    let mut entries = Vec::new();
    // Graph file and shared weights of each graph written so far, by graph id: a
    // capped configuration runs its uncapped twin's graph.
    let mut graphs: std::collections::HashMap<String, (String, Vec<String>)> =
        std::collections::HashMap::new();
    for config in &req.configs {
        let sub = &config.sub;
        let id = config.id(dims.num_layers);
        let graph_id = config.graph_id(dims.num_layers);
        if !graphs.contains_key(&graph_id) {
            let w = ModelWeights::new(checkpoint, adapters, config, &graph_id, req.merge_adapters);
            let mut g = GraphBuilder::new(Some(&mut store));
            if isolated {
                forward::build_split(&mut g, family.as_ref(), &w, sub, readout, mode)?;
            } else {
                forward::build(&mut g, family.as_ref(), &w, sub, readout, mode)?;
            }
            let shared = g.shared.clone();
            let model = g.finish(
                &format!("mrank {graph_id}"),
                &format!(
                    "mrank sub-structure {graph_id} of {}",
                    checkpoint.dir.display()
                ),
                &[
                    ("mrank.config", graph_id.clone()),
                    ("mrank.readout", readout.name().to_string()),
                ],
            );
            let file = format!("{graph_id}.onnx");
            let path = req.out.join(&file);
            std::fs::write(&path, onnx::encode(&model)).map_err(io_err(&path))?;
            graphs.insert(graph_id.clone(), (file, shared));
        }
        let (file, shared) = graphs[&graph_id].clone();
        let flops = pair_flops(&dims, config.capped(lengths), segments, sub);
        entries.push(ConfigEntry {
            id,
            depth: sub.depth,
            ratio: sub.ratio,
            compress_layers: sub.compress_layers.clone(),
            passage_tokens: config.passage_tokens,
            precision: config.precision,
            graph: file,
            flops_per_pair: flops,
            flops_ratio: flops / full_flops,
            shared,
            ndcg_at_10: None,
            latency_ms: None,
            reference_batch: None,
            frontier: false,
        });
    }
    let weights_path = req.out.join(SHARED_WEIGHTS_FILE);
    std::fs::write(&weights_path, &store.bytes).map_err(io_err(&weights_path))?;
    for file in ["tokenizer.json", "config.json"] {
        let from = checkpoint.dir.join(file);
        let to = req.out.join(file);
        std::fs::copy(&from, &to).map_err(io_err(&from))?;
    }
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        model: match req.adapters {
            Some(a) => format!("{} + {}", checkpoint.dir.display(), a.display()),
            None => format!("{} (untrained heads)", checkpoint.dir.display()),
        },
        family: checkpoint.family().name().into(),
        architecture: checkpoint.config.variant_name().into(),
        num_layers: dims.num_layers,
        hidden_size: dims.hidden_size,
        max_length: req.max_length,
        readout: readout.name().to_string(),
        merge_mode: trainer::adapters::merge_mode_name(mode).into(),
        inputs: if isolated {
            forward::SPLIT_INPUTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            forward::input_names(family.as_ref(), readout)
        },
        tokenizer: "tokenizer.json".into(),
        model_config: "config.json".into(),
        shared_weights: Some(SharedWeights {
            file: SHARED_WEIGHTS_FILE.into(),
            tensors: store
                .index
                .values()
                .map(|w| SharedTensor {
                    name: w.name.clone(),
                    shape: w.shape.clone(),
                    offset: w.offset,
                    length: w.length,
                    dtype: w.dtype,
                })
                .collect(),
        }),
        reference_lengths: ReferenceLengths {
            query: models::flops::REFERENCE_QUERY_TOKENS,
            passage: models::flops::REFERENCE_PASSAGE_TOKENS,
        },
        configs: entries,
    };
    manifest.mark_frontier();
    manifest.write(req.out)?;
    Ok(manifest)
}

/// Makes `out` ready for a new export. It may be new, empty, or hold an earlier export,
/// complete or not (a manifest, the shared weights or a graph), whose files are removed
/// first: the manifest before anything else, so an export that fails halfway is never
/// mistaken for a complete one, and no graph of the old one stays behind. Anything else
/// is refused: the model being exported (copying its `config.json` onto itself would
/// empty it), its adapters' run, or a directory of other files.
fn prepare_out(out: &Path, model_dir: &Path, adapters: Option<&Path>) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let adapters_dir = adapters
        .and_then(|a| a.parent())
        .filter(|d| !d.as_os_str().is_empty());
    if same(out, model_dir) || adapters_dir.is_some_and(|d| same(out, d)) {
        return Err(ExportError::Input(format!(
            "{}: --out is the model being exported; write the export to a directory of its own",
            out.display()
        )));
    }
    if !out.exists() {
        return std::fs::create_dir_all(out).map_err(io_err(out));
    }
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let is_graph = |p: &Path| p.extension().is_some_and(|e| e == "onnx");
    let manifest = out.join(models::manifest::MANIFEST_FILE);
    let written_by_export = |p: &Path| {
        is_graph(p)
            || [models::manifest::MANIFEST_FILE, SHARED_WEIGHTS_FILE].contains(&name(p).as_str())
    };
    if !files.is_empty() && !files.iter().any(|p| written_by_export(p)) {
        return Err(ExportError::Input(format!(
            "{}: holds files but no {}, {} or graph, so it is not an earlier export; \
             export to a new or empty directory",
            out.display(),
            models::manifest::MANIFEST_FILE,
            SHARED_WEIGHTS_FILE
        )));
    }
    if manifest.is_file() {
        std::fs::remove_file(&manifest).map_err(io_err(&manifest))?;
    }
    // What an export writes; anything else a user keeps there stays.
    for path in files.iter().filter(|p| {
        p.is_file()
            && (written_by_export(p)
                || ["tokenizer.json", "config.json"].contains(&name(p).as_str()))
    }) {
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    Ok(())
}

/// The default output directory name for an export of `adapters`.
pub fn default_out(adapters: Option<&Path>) -> PathBuf {
    match adapters.and_then(|a| a.parent()) {
        Some(dir) => dir.join("onnx"),
        None => PathBuf::from("onnx"),
    }
}
