//! The embedded default as an export directory: exported on first use into the set-up
//! cache (next to the base model), re-exported when the adapters change.

use std::path::PathBuf;

use anyhow::{Context, Result};
use export::{export_with, ExportRequest};

use crate::model_args::{default_adapters, ModelArgs};

/// Where the embedded default's export lives: `MRANK_EXPORT`, else `.cache/export/minilm-l6`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MRANK_EXPORT") {
        return PathBuf::from(d);
    }
    crate::default_model_dir()
        .parent()
        .map(|p| p.join("export/minilm-l6"))
        .unwrap_or_else(|| PathBuf::from("export/minilm-l6"))
}

/// Exports the embedded default unless an export of the same adapters exists; returns
/// the directory.
pub fn ensure() -> Result<PathBuf> {
    let out = dir();
    let adapters = default_adapters();
    let stamp_path = out.join("adapters.stamp");
    let stamp = adapters_stamp(&adapters)?;
    if out.join(models::manifest::MANIFEST_FILE).is_file()
        && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        return Ok(out);
    }
    let args = ModelArgs {
        model: None,
        adapters: None,
        max_length: 256,
    };
    let (base, adapters_path, _) = crate::model_args::resolve(&args)?;
    eprintln!(
        "exporting the embedded default model to {} (first start only)",
        out.display()
    );
    let checkpoint = models::Checkpoint::open(&base)?;
    let loaded = export::load_adapters(&checkpoint, adapters_path.as_deref())?;
    let dims = checkpoint.config.dimensions();
    let min_depth = loaded.heads.min_depth().unwrap_or(1);
    // The configurations whose DL19 quality is committed beside the adapters: the
    // frontier needs measured quality, and serving needs only the frontier.
    let quality = quality_table();
    let spec = if quality.is_empty() {
        "all".to_string()
    } else {
        quality
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let configs = crate::eval::select_configs(&spec, dims.num_layers, min_depth)?;
    // The stamp goes first: an export interrupted from here on leaves only files an
    // export writes, which the next start replaces.
    if stamp_path.exists() {
        std::fs::remove_file(&stamp_path)
            .with_context(|| format!("{}: cannot remove", stamp_path.display()))?;
    }
    remove_graphs(&out)?;
    let manifest = export_with(
        &checkpoint,
        &loaded,
        &ExportRequest {
            model_dir: &base,
            adapters: adapters_path.as_deref(),
            configs,
            out: &out,
            merge_adapters: false,
            max_length: args.max_length,
        },
    )?;
    let runtime = models::Runtime::load(&out, &Default::default())?;
    let mut manifest = manifest;
    export::measure::record_latencies(&runtime, &mut manifest)?;
    drop(runtime);
    for c in manifest.configs.iter_mut() {
        c.ndcg_at_10 = quality.iter().find(|(id, _)| *id == c.id).map(|(_, q)| *q);
    }
    manifest.mark_frontier();
    manifest.write(&out)?;
    let manifest = crate::export::keep_frontier(&out, manifest)?;
    eprintln!(
        "exported the quality/latency frontier, with passage caps and without: {}",
        manifest
            .configs
            .iter()
            .filter(|c| c.frontier)
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("{}: cannot write", stamp_path.display()))?;
    Ok(out)
}

/// Removes the graphs of an earlier export: this directory is the cache's own, and
/// configurations that left the frontier would otherwise stay on disk for good.
fn remove_graphs(dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // first export: nothing there yet
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "onnx") {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
}

/// The committed DL19 nDCG@10 of the embedded default (`adapters/minilm-l6/eval.json`,
/// written by `mrank eval --json`), by configuration id.
fn quality_table() -> Vec<(String, f64)> {
    let path = default_adapters().with_file_name("eval.json");
    let Some(json) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return Vec::new();
    };
    json["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| Some((row["id"].as_str()?.to_string(), row["ndcg@10"].as_f64()?)))
        .collect()
}

/// Bumped whenever the rule for which configurations an export keeps changes, so the
/// cached export is rebuilt (2: the frontier with passage caps and the frontier without
/// them, plus the longer reads that bound a kept cap's rank; 3: an int8 twin ranks at
/// most as its f32 configuration, kept beside it, and isolated segments are priced as
/// they run).
const KEPT_SET_RULE: u32 = 3;

fn adapters_stamp(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "{}: the embedded default's adapters are missing",
            path.display()
        )
    })?;
    // Content, the committed qualities (which pick the served set) and the exporter
    // revision: any change re-exports.
    let qualities = std::fs::read(path.with_file_name("eval.json")).unwrap_or_default();
    Ok(format!(
        "{} bytes, content {:016x}, qualities {:016x}, exporter revision {}, kept-set rule {KEPT_SET_RULE}, version {}",
        bytes.len(),
        models::content_hash(&bytes),
        models::content_hash(&qualities),
        export::EXPORTER_REVISION,
        env!("CARGO_PKG_VERSION")
    ))
}
