//! Which model a command runs: the embedded default (base model from the set-up cache
//! plus the committed adapters), a training run's output directory, or a plain base
//! checkpoint (untrained span-product heads).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory: a `mrank train` output (adapters.safetensors + train.toml) or a
    /// Hugging Face checkpoint. Default: the embedded default model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Adapters file to use with `--model` (overrides the run directory's own).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Maximum tokens per (query, passage) pair.
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
}

/// The committed adapters of the embedded default model.
pub fn default_adapters() -> PathBuf {
    if let Some(p) = std::env::var_os("MRANK_ADAPTERS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../adapters/minilm-l6/adapters.safetensors")
}

/// Resolves to (base checkpoint dir, adapters file if any, display name).
pub fn resolve(args: &ModelArgs) -> Result<(PathBuf, Option<PathBuf>, String)> {
    match &args.model {
        None => {
            let adapters = args.adapters.clone().unwrap_or_else(default_adapters);
            if !adapters.exists() {
                bail!("{}: the embedded default's adapters are missing; pass --adapters FILE or run `mrank train`", adapters.display());
            }
            Ok((
                crate::default_model_dir(),
                Some(adapters),
                "mrank-minilm-l6 (embedded default)".into(),
            ))
        }
        Some(dir) => {
            if !dir.is_dir() {
                bail!("{}: not a directory", dir.display());
            }
            let run_adapters = dir.join("adapters.safetensors");
            if run_adapters.exists() && !dir.join("config.json").exists() {
                let base = run_base(dir)?;
                Ok((
                    base,
                    Some(args.adapters.clone().unwrap_or(run_adapters)),
                    dir.display().to_string(),
                ))
            } else {
                Ok((
                    dir.clone(),
                    args.adapters.clone(),
                    dir.display().to_string(),
                ))
            }
        }
    }
}

/// The base checkpoint a run directory was trained from (its `train.toml`).
fn run_base(dir: &Path) -> Result<PathBuf> {
    let config = dir.join("train.toml");
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("{}: a run directory needs its train.toml", config.display()))?;
    let value: toml::Value =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", config.display()))?;
    match value
        .get("model")
        .and_then(|m| m.get("base"))
        .and_then(|b| b.as_str())
    {
        Some(base) if !base.is_empty() => Ok(PathBuf::from(base)),
        _ => Ok(crate::default_model_dir()),
    }
}
