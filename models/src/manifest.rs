//! The manifest of an export directory: what graphs exist, what each costs and how good
//! it is, and the shared weights they reference. Written by `mrank export`, read by the
//! runtime and the scheduler.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ModelsError, Result};

/// 2: split graphs (isolated segments) take passages as `[CLS] p [SEP]`, positions from 0.
/// 3: a configuration may cap its passages (`passage_tokens`) and share another's graph;
/// an mrank that ignored the cap would serve it uncapped, so older versions must refuse.
pub const MANIFEST_FORMAT: &str = "mrank-manifest/3";
/// Formats this version reads: 2 differs from 3 only in having no caps.
const READABLE_FORMATS: [&str; 2] = ["mrank-manifest/2", MANIFEST_FORMAT];
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    /// Where the export came from (base checkpoint and adapters), for humans.
    pub model: String,
    pub family: String,
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// Tokens per pair the encoder keeps (template included).
    pub max_length: usize,
    pub readout: String,
    pub merge_mode: String,
    /// Graph input names, in order.
    pub inputs: Vec<String>,
    /// Files next to the manifest: the tokenizer and config of the base checkpoint.
    pub tokenizer: String,
    pub model_config: String,
    /// The external-data file holding weights every graph shares, if any.
    pub shared_weights: Option<SharedWeights>,
    /// Lengths (tokens) FLOPs are quoted at.
    pub reference_lengths: ReferenceLengths,
    pub configs: Vec<ConfigEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReferenceLengths {
    pub query: usize,
    pub passage: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SharedWeights {
    pub file: String,
    pub tensors: Vec<SharedTensor>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SharedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub length: usize,
    /// Element type in the file: f32, or i8 for int8 configurations' weights.
    #[serde(default)]
    pub dtype: ElementType,
}

/// Element type of a shared weight.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    #[default]
    F32,
    I8,
}

impl ElementType {
    pub fn size(self) -> usize {
        match self {
            ElementType::F32 => 4,
            ElementType::I8 => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigEntry {
    pub id: String,
    pub depth: usize,
    /// Passage tokens per merged token (1 = full width).
    pub ratio: usize,
    pub compress_layers: Vec<usize>,
    /// Passage tokens kept (the first ones) before the graph runs; all when absent
    /// (`models::precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passage_tokens: Option<usize>,
    /// f32, or int8 projections (`models::precision`).
    #[serde(default)]
    pub precision: crate::Precision,
    /// The ONNX graph file; capped configurations share their uncapped twin's.
    pub graph: String,
    pub flops_per_pair: f64,
    pub flops_ratio: f64,
    /// Shared weights the graph references.
    #[serde(default)]
    pub shared: Vec<String>,
    /// Dev quality, when the export was given evaluation data.
    #[serde(rename = "ndcg@10", default, skip_serializing_if = "Option::is_none")]
    pub ndcg_at_10: Option<f64>,
    /// Median milliseconds of the reference batch, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_batch: Option<String>,
    /// On the quality/cost frontier: no other configuration is both cheaper and better.
    #[serde(default)]
    pub frontier: bool,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelsError::Manifest {
            path: path.clone(),
            message: match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "missing; `mrank export --out DIR` writes an export directory".into()
                }
                _ => e.to_string(),
            },
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelsError::Json {
            path: path.clone(),
            source: e,
        })?;
        if !READABLE_FORMATS.contains(&manifest.format.as_str()) {
            return Err(ModelsError::Manifest {
                path,
                message: format!(
                    "manifest format {:?}, this mrank reads {}; export the model again with this version",
                    manifest.format,
                    READABLE_FORMATS.join(" and ")
                ),
            });
        }
        Ok(manifest)
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        std::fs::write(&path, text).map_err(|e| ModelsError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(path)
    }

    pub fn config(&self, id: &str) -> Option<&ConfigEntry> {
        self.configs.iter().find(|c| c.id == id)
    }

    /// Marks the frontier by (cost, quality): cost is the measured latency when every
    /// configuration has one, else FLOPs; quality is dev nDCG@10 when every configuration
    /// has one, else FLOPs (more computation assumed better: then every configuration
    /// not beaten on latency by a costlier one is on the frontier).
    pub fn mark_frontier(&mut self) {
        let measured = self.configs.iter().all(|c| c.latency_ms.is_some());
        let judged = self.configs.iter().all(|c| c.ndcg_at_10.is_some());
        let cost = |c: &ConfigEntry| {
            if measured {
                c.latency_ms.unwrap_or(f64::MAX)
            } else {
                c.flops_per_pair
            }
        };
        let quality = |c: &ConfigEntry| match (judged, c.ndcg_at_10) {
            (true, Some(q)) => q,
            _ => c.flops_ratio,
        };
        let flags: Vec<bool> = self
            .configs
            .iter()
            .map(|c| {
                !self.configs.iter().any(|o| {
                    (cost(o) <= cost(c) && quality(o) > quality(c))
                        || (cost(o) < cost(c) && quality(o) >= quality(c))
                })
            })
            .collect();
        for (c, f) in self.configs.iter_mut().zip(flags) {
            c.frontier = f;
        }
    }
}
