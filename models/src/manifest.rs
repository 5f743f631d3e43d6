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
        for c in &manifest.configs {
            // An id that names a cap its entry lacks would serve uncapped, silently.
            let parsed = crate::Configuration::parse(&c.id, manifest.num_layers, 1).ok();
            let named_cap = parsed.as_ref().and_then(|p| p.passage_tokens);
            if c.passage_tokens == Some(0) || (parsed.is_some() && named_cap != c.passage_tokens) {
                return Err(ModelsError::Manifest {
                    path,
                    message: format!(
                        "configuration {} has passage_tokens {:?}, which its id does not name; export again",
                        c.id, c.passage_tokens
                    ),
                });
            }
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

    /// The quality a configuration is ranked by: its dev nDCG@10 (FLOPs when not every
    /// configuration has one), except that a cheaper way of running a configuration
    /// never ranks above it. A passage cap ranks at most as the same graph with a larger
    /// cap or none: cutting a passage removes what the model could read, so a measured
    /// gain from it is noise of the dev set (DL19: +0.003 at most, p ≥ 0.9), and on
    /// passages longer than the dev set's it would be a loss. An int8 twin ranks at most
    /// as its f32 configuration: its activations are quantized per batch, so its scores
    /// move with the batch they share (the embedded default's int8 rows moved by up to
    /// ±0.01 nDCG@10 between two evaluations batched differently), and a measured gain
    /// over f32 is that noise.
    pub fn ranking_quality(&self, c: &ConfigEntry) -> f64 {
        let judged = self.configs.iter().all(|c| c.ndcg_at_10.is_some());
        let quality = |c: &ConfigEntry| match (judged, c.ndcg_at_10) {
            (true, Some(q)) => q,
            _ => c.flops_ratio,
        };
        // Bounded by its bounds' own ranking (an int8 cap by the int8 graph's uncapped
        // entry, which its f32 twin bounds in turn). Ends: a longer read has a larger cap
        // or none, and the twin step goes from int8 to f32 only.
        self.rank_bounds(c)
            .map(|o| self.ranking_quality(&self.configs[o]))
            .fold(quality(c), f64::min)
    }

    /// Indices of the entries that bound `c`'s rank directly: the same graph reading
    /// more of each passage (when `c` is capped), and the f32 configuration of an int8
    /// one. An export keeps them beside `c` (`keep_frontier`).
    pub fn rank_bounds<'a>(&'a self, c: &'a ConfigEntry) -> impl Iterator<Item = usize> + 'a {
        let twin = self.f32_twin(c);
        self.configs.iter().enumerate().filter_map(move |(i, o)| {
            let longer_read = o.graph == c.graph
                && c.passage_tokens
                    .is_some_and(|cap| o.passage_tokens.is_none_or(|k| k > cap));
            let is_twin = twin.is_some_and(|t| std::ptr::eq(t, o));
            (longer_read || is_twin).then_some(i)
        })
    }

    /// The f32 configuration an int8 one quantizes: the same sub-structure and cap.
    fn f32_twin(&self, c: &ConfigEntry) -> Option<&ConfigEntry> {
        if c.precision != crate::Precision::Int8 {
            return None;
        }
        self.configs.iter().find(|o| {
            o.precision == crate::Precision::F32
                && o.depth == c.depth
                && o.ratio == c.ratio
                && o.compress_layers == c.compress_layers
                && o.passage_tokens == c.passage_tokens
        })
    }

    /// The ranking order, best first: ranking quality, then (at equal quality) the
    /// configuration that reads more of the passage, then f32 before int8, so that a cap
    /// or an int8 twin only serves when it is cheaper than what it ties with, never in
    /// its place.
    pub fn rank_key(&self, c: &ConfigEntry) -> (f64, usize, bool) {
        (
            self.ranking_quality(c),
            c.passage_tokens.unwrap_or(usize::MAX),
            c.precision == crate::Precision::F32,
        )
    }

    /// Which configurations `include` admits are on their own frontier by (cost, rank):
    /// cost is the measured latency when every configuration has one, else FLOPs; rank
    /// is `rank_key` (dev nDCG@10 when every configuration has one, else FLOPs: more
    /// computation assumed better, so then every configuration not beaten on latency by
    /// a costlier one is on the frontier). Configurations left out are `false`.
    pub fn frontier_of(&self, include: impl Fn(&ConfigEntry) -> bool) -> Vec<bool> {
        let measured = self.configs.iter().all(|c| c.latency_ms.is_some());
        let cost = |c: &ConfigEntry| {
            if measured {
                c.latency_ms.unwrap_or(f64::MAX)
            } else {
                c.flops_per_pair
            }
        };
        let keys: Vec<(f64, usize, bool)> = self.configs.iter().map(|c| self.rank_key(c)).collect();
        let better = rank_order;
        let included: Vec<bool> = self.configs.iter().map(&include).collect();
        (0..self.configs.len())
            .map(|i| {
                let c = &self.configs[i];
                included[i]
                    && !(0..self.configs.len()).any(|j| {
                        let o = &self.configs[j];
                        let order = better(keys[j], keys[i]);
                        included[j]
                            && ((cost(o) <= cost(c) && order.is_gt())
                                || (cost(o) < cost(c) && order.is_ge()))
                    })
            })
            .collect()
    }

    /// Marks the configurations on the frontier with passage caps or on the frontier
    /// without them: a server that leaves caps out (`mrank serve --passage-caps false`)
    /// still finds a whole ladder in an export that kept only `frontier` entries.
    pub fn mark_frontier(&mut self) {
        let all = self.frontier_of(|_| true);
        let uncapped = self.frontier_of(|c| c.passage_tokens.is_none());
        for ((c, a), u) in self.configs.iter_mut().zip(all).zip(uncapped) {
            c.frontier = a || u;
        }
    }
}

/// How two rank keys (`Manifest::rank_key`) compare: `Greater` when `a` ranks above `b`.
pub fn rank_order(a: (f64, usize, bool), b: (f64, usize, bool)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, graph: &str, cap: Option<usize>, ndcg: f64, ms: f64) -> ConfigEntry {
        ConfigEntry {
            id: id.into(),
            depth: 6,
            ratio: 1,
            compress_layers: Vec::new(),
            passage_tokens: cap,
            precision: crate::Precision::F32,
            graph: graph.into(),
            flops_per_pair: ms,
            flops_ratio: ms / 100.0,
            shared: Vec::new(),
            ndcg_at_10: Some(ndcg),
            latency_ms: Some(ms),
            reference_batch: None,
            frontier: false,
        }
    }

    fn manifest(configs: Vec<ConfigEntry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            model: "test".into(),
            family: "bert".into(),
            architecture: "bert".into(),
            num_layers: 6,
            hidden_size: 384,
            max_length: 256,
            readout: "max-sim".into(),
            merge_mode: "uniform".into(),
            inputs: Vec::new(),
            tokenizer: "tokenizer.json".into(),
            model_config: "config.json".into(),
            shared_weights: None,
            reference_lengths: ReferenceLengths {
                query: 32,
                passage: 128,
            },
            configs,
        }
    }

    /// A manifest whose id names a cap its entry lacks (or the reverse) would serve a
    /// cap uncapped: refused at read, naming the configuration. Format 2 still reads.
    #[test]
    fn ids_and_caps_that_disagree_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest(vec![entry("full-p64", "full.onnx", None, 0.68, 50.0)]);
        m.write(dir.path()).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("full-p64") && err.contains("passage_tokens"),
            "{err}"
        );
        m.configs = vec![entry("full", "full.onnx", Some(64), 0.68, 50.0)];
        m.write(dir.path()).unwrap();
        assert!(Manifest::read(dir.path()).is_err());
        m.configs = vec![entry("full-p64", "full.onnx", Some(64), 0.68, 50.0)];
        m.format = "mrank-manifest/2".into();
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap().configs.len(), 1);
        m.format = "mrank-manifest/1".into();
        m.write(dir.path()).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("mrank-manifest/2 and mrank-manifest/3"),
            "{err}"
        );
    }

    /// A cap that measured above its uncapped twin (or a larger cap) ranks at the
    /// twin's quality, below it; the uncapped configuration stays on the frontier
    /// however cheap its caps are, and a cap that costs quality keeps its own figure.
    #[test]
    fn a_passage_cap_never_ranks_above_more_of_the_passage() {
        let mut m = manifest(vec![
            entry("full", "full.onnx", None, 0.680, 100.0),
            entry("full-p96", "full.onnx", Some(96), 0.683, 80.0),
            entry("full-p64", "full.onnx", Some(64), 0.681, 50.0),
            entry("full-p32", "full.onnx", Some(32), 0.640, 30.0),
            entry("d2", "d2.onnx", None, 0.550, 35.0),
        ]);
        let q: Vec<f64> = m.configs.iter().map(|c| m.ranking_quality(c)).collect();
        assert_eq!(q, [0.680, 0.680, 0.680, 0.640, 0.550]);
        m.mark_frontier();
        let on: Vec<&str> = m
            .configs
            .iter()
            .filter(|c| c.frontier)
            .map(|c| c.id.as_str())
            .collect();
        // d2 is slower and worse than full-p32, but on the frontier without caps.
        assert_eq!(on, ["full", "full-p96", "full-p64", "full-p32", "d2"]);
        let with_caps = m.frontier_of(|_| true);
        assert_eq!(with_caps, [true, true, true, true, false]);
        let without = m.frontier_of(|c| c.passage_tokens.is_none());
        assert_eq!(without, [true, false, false, false, true]);
        let mut order: Vec<&ConfigEntry> = m.configs.iter().collect();
        order.sort_by(|a, b| {
            let (ka, kb) = (m.rank_key(a), m.rank_key(b));
            kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1))
        });
        assert_eq!(order[0].id, "full");
        assert_eq!(order[1].id, "full-p96");
    }

    /// An int8 twin that measured above its f32 configuration ranks at the f32 figure,
    /// after it: both stay on the frontier (the twin for being cheaper), where without
    /// the rule the twin would push full off it. An int8 twin that costs quality keeps
    /// its own figure, and its caps are bounded by the f32 caps too.
    #[test]
    fn an_int8_twin_never_ranks_above_its_f32_configuration() {
        let int8 = |mut e: ConfigEntry| {
            e.precision = crate::Precision::Int8;
            e
        };
        let mut d5 = entry("d5", "d5.onnx", None, 0.649, 80.0);
        d5.depth = 5;
        let mut d5_int8 = int8(entry("d5-int8", "d5-int8.onnx", None, 0.640, 40.0));
        d5_int8.depth = 5;
        let m = manifest(vec![
            entry("full", "full.onnx", None, 0.680, 100.0),
            int8(entry("full-int8", "full-int8.onnx", None, 0.681, 50.0)),
            entry("full-p64", "full.onnx", Some(64), 0.679, 45.0),
            int8(entry(
                "full-p64-int8",
                "full-int8.onnx",
                Some(64),
                0.682,
                25.0,
            )),
            d5,
            d5_int8,
        ]);
        let q: Vec<f64> = m.configs.iter().map(|c| m.ranking_quality(c)).collect();
        assert_eq!(q, [0.680, 0.680, 0.679, 0.679, 0.649, 0.640]);
        let on = m.frontier_of(|_| true);
        assert_eq!(on, [true, true, true, true, false, false]);
        assert!(m.rank_key(&m.configs[0]) > m.rank_key(&m.configs[1]));
        // An int8 cap with no f32 cap beside it is bounded through its uncapped int8
        // entry, and so by that entry's f32 twin too.
        let mut d2 = entry("d2", "d2.onnx", None, 0.547, 35.0);
        d2.depth = 2;
        let mut d2_int8 = int8(entry("d2-int8", "d2-int8.onnx", None, 0.548, 20.0));
        d2_int8.depth = 2;
        let mut d2_p48_int8 = int8(entry("d2-p48-int8", "d2-int8.onnx", Some(48), 0.554, 12.0));
        d2_p48_int8.depth = 2;
        let m = manifest(vec![d2, d2_int8, d2_p48_int8]);
        let q: Vec<f64> = m.configs.iter().map(|c| m.ranking_quality(c)).collect();
        assert_eq!(q, [0.547, 0.547, 0.547]);
    }
}
