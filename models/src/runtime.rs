//! ONNX Runtime execution of an export directory: one session per configuration, the
//! shared base weights handed to every session from one buffer (`AddInitializer`) with
//! one pre-packed weights container, so N loaded configurations cost little more memory
//! than one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use crate::encoding::{EncodedPair, PaddedBatch, PairEncoder, DEFAULT_PROMPT};
use crate::error::{ModelsError, Result};
use crate::families::ModelConfig;
use crate::manifest::{ConfigEntry, ElementType, Manifest};

/// The environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

const SETUP_HINT: &str = "run `make setup` (scripts/setup.sh downloads onnxruntime==1.31.1 from PyPI into .cache/) and set ORT_DYLIB_PATH=.cache/onnxruntime-1.31.1/libonnxruntime.so.1.31.1";

static ORT_ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process, from `ORT_DYLIB_PATH`, with one
/// intra-op thread pool of `threads` threads (0 = one per core) that every session
/// shares: sessions then carry no threads of their own, so loading many configurations
/// costs little, and they never oversubscribe the cores between them. The first call
/// fixes the thread count for the process.
pub fn init_onnxruntime(threads: usize) -> Result<&'static Environment> {
    ORT_ENV
        .get_or_init(|| {
            let path = std::env::var_os(ORT_DYLIB_ENV).ok_or_else(|| {
                format!("ONNX Runtime library not configured: {ORT_DYLIB_ENV} is not set; {SETUP_HINT}")
            })?;
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(format!(
                    "ONNX Runtime library not found at {} ({ORT_DYLIB_ENV}); {SETUP_HINT}",
                    path.display()
                ));
            }
            let builder = ort::init_from(&path).map_err(|e| {
                format!("cannot use the ONNX Runtime library at {}: {e}; mrank needs onnxruntime 1.31 or newer: {SETUP_HINT}", path.display())
            })?;
            let pool = ort::environment::GlobalThreadPoolOptions::default()
                .with_intra_threads(threads)
                .and_then(|p| p.with_inter_threads(1))
                .map_err(|e| format!("ONNX Runtime thread pool: {e}"))?;
            builder
                .with_name("mrank")
                .with_global_thread_pool(pool)
                .build()
                .map_err(|e| format!("ONNX Runtime failed to start: {e}"))
        })
        .as_ref()
        .map_err(|e| ModelsError::Runtime(e.clone()))
}

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Intra-op threads of the process-wide pool every session shares (0 = one per
    /// core); the first runtime loaded in a process fixes it.
    pub intra_threads: usize,
    /// Load only these configuration ids (all when `None`).
    pub configs: Option<Vec<String>>,
    /// Share base weights between sessions (off only to measure what sharing saves).
    pub share_weights: bool,
    /// Use the CUDA execution provider (needs the `cuda` feature and onnxruntime-gpu).
    pub cuda: bool,
    /// Give every session ONNX Runtime's CPU arena. An arena keeps the largest working
    /// set its session ever needed, and each configuration has its own, so a server
    /// with ten rungs holds ten peaks; without arenas, memory goes back after each run.
    pub cpu_arena: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            intra_threads: 0,
            configs: None,
            share_weights: true,
            cuda: false,
            cpu_arena: true,
        }
    }
}

pub struct LoadedConfig {
    pub entry: ConfigEntry,
    /// Shared by the configurations that run the same graph (a passage cap and its
    /// uncapped twin): one session, one set of buffers.
    session: Arc<Mutex<Session>>,
}

/// A loaded export directory.
pub struct Runtime {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub encoder: PairEncoder,
    pub configs: Vec<LoadedConfig>,
    needs_types: bool,
    needs_query_span: bool,
    /// Graphs of isolated segments take each distinct query once (`split_inputs`).
    split_segments: bool,
}

fn ort_err(context: &str) -> impl Fn(ort::Error) -> ModelsError + '_ {
    move |e| ModelsError::Runtime(format!("{context}: {e}"))
}

impl Runtime {
    pub fn load(dir: &Path, options: &RuntimeOptions) -> Result<Self> {
        let env = init_onnxruntime(options.intra_threads)?;
        let manifest = Manifest::read(dir)?;
        let config_path = dir.join(&manifest.model_config);
        let model_config = ModelConfig::from_file(&config_path)?;
        let tokenizer =
            crate::checkpoint::load_tokenizer(&dir.join(&manifest.tokenizer), &model_config)?;
        let split_segments = manifest.inputs.iter().any(|i| i == "query_ids");
        let encoder = PairEncoder::from_parts(
            tokenizer,
            &model_config,
            manifest.max_length,
            DEFAULT_PROMPT,
        )?
        .with_isolated_segments(split_segments)?;
        if let Some(wanted) = &options.configs {
            for id in wanted {
                if manifest.config(id).is_none() {
                    return Err(ModelsError::Manifest {
                        path: dir.join(crate::manifest::MANIFEST_FILE),
                        message: format!(
                            "no configuration {id:?}; it has {}",
                            manifest
                                .configs
                                .iter()
                                .map(|c| c.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
        }
        let shared = if options.share_weights {
            let used: std::collections::BTreeSet<&str> = manifest
                .configs
                .iter()
                .filter(|c| options.configs.as_ref().is_none_or(|w| w.contains(&c.id)))
                .flat_map(|c| c.shared.iter().map(String::as_str))
                .collect();
            load_shared(dir, &manifest, &used)?
        } else {
            Vec::new()
        };
        let prepacked = PrepackedWeights::new();
        let mut configs = Vec::new();
        let mut sessions: std::collections::HashMap<String, Arc<Mutex<Session>>> =
            std::collections::HashMap::new();
        for entry in &manifest.configs {
            if let Some(wanted) = &options.configs {
                if !wanted.contains(&entry.id) {
                    continue;
                }
            }
            if let Some(session) = sessions.get(&entry.graph) {
                configs.push(LoadedConfig {
                    entry: entry.clone(),
                    session: Arc::clone(session),
                });
                continue;
            }
            let graph = dir.join(&entry.graph);
            if !graph.is_file() {
                return Err(ModelsError::Manifest {
                    path: dir.join(crate::manifest::MANIFEST_FILE),
                    message: format!(
                        "configuration {} names graph {}, which does not exist; export again",
                        entry.id,
                        graph.display()
                    ),
                });
            }
            let session = build_session(env, &graph, entry, &shared, &prepacked, options)
                .map_err(|e| ModelsError::Runtime(format!("{}: {e}", graph.display())))?;
            let names: Vec<String> = session
                .inputs()
                .iter()
                .map(|i| i.name().to_string())
                .collect();
            if names != manifest.inputs {
                return Err(ModelsError::Manifest {
                    path: graph,
                    message: format!(
                        "graph inputs are {names:?}, but a {} export takes {:?}; the graph does not belong to this manifest",
                        manifest.family, manifest.inputs
                    ),
                });
            }
            let session = Arc::new(Mutex::new(session));
            sessions.insert(entry.graph.clone(), Arc::clone(&session));
            configs.push(LoadedConfig {
                entry: entry.clone(),
                session,
            });
        }
        Ok(Runtime {
            dir: dir.to_path_buf(),
            needs_types: manifest.inputs.iter().any(|i| i == "token_type_ids"),
            needs_query_span: manifest.inputs.iter().any(|i| i == "query_span"),
            split_segments,
            manifest,
            encoder,
            configs,
        })
    }

    pub fn config(&self, id: &str) -> Option<&LoadedConfig> {
        self.configs.iter().find(|c| c.entry.id == id)
    }

    pub fn config_ids(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.entry.id.clone()).collect()
    }

    fn loaded(&self, id: &str) -> Result<&LoadedConfig> {
        self.config(id).ok_or_else(|| {
            ModelsError::Runtime(format!(
                "configuration {id:?} is not loaded (loaded: {})",
                self.config_ids().join(", ")
            ))
        })
    }

    /// Runs one padded batch under configuration `id`: one score per row. A capped
    /// configuration cuts the batch's passages first.
    pub fn run(&self, id: &str, batch: &PaddedBatch) -> Result<Vec<f32>> {
        let config = self.loaded(id)?;
        let capped = config
            .entry
            .passage_tokens
            .and_then(|cap| batch.with_passage_cap(cap, self.encoder.pad_id));
        let batch = capped.as_ref().unwrap_or(batch);
        let named = if self.split_segments {
            split_inputs(batch, self.encoder.pad_id, true)
        } else {
            self.joint_inputs(batch)
        };
        let inputs = named
            .into_iter()
            .map(|(name, data, shape)| {
                let value = Tensor::from_array((shape, data))
                    .map_err(ort_err("input tensor"))?
                    .into_dyn();
                Ok((name.to_string(), value))
            })
            .collect::<Result<Vec<(String, DynValue)>>>()?;
        let mut session = config
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(inputs)
            .map_err(ort_err(&format!("running configuration {id}")))?;
        let (_, scores) = outputs["scores"]
            .try_extract_tensor::<f32>()
            .map_err(ort_err("reading scores"))?;
        Ok(scores.to_vec())
    }

    /// Inputs of a joint-sequence graph: the padded pairs as they are, as (name, data,
    /// shape) in graph input order.
    fn joint_inputs(&self, batch: &PaddedBatch) -> Vec<(&'static str, Vec<i64>, Vec<i64>)> {
        let (b, t) = (batch.batch_size as i64, batch.seq_len as i64);
        let ints = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        let spans = |spans: &[crate::Span]| -> Vec<i64> {
            spans
                .iter()
                .flat_map(|s| [s.start as i64, s.end() as i64])
                .collect()
        };
        let mut inputs = vec![
            ("input_ids", ints(&batch.input_ids), vec![b, t]),
            ("attention_mask", ints(&batch.attention_mask()), vec![b, t]),
        ];
        if self.needs_types {
            inputs.push(("token_type_ids", ints(&batch.token_type_ids), vec![b, t]));
        }
        inputs.push(("passage_span", spans(&batch.passage), vec![b, 2]));
        if self.needs_query_span {
            inputs.push(("query_span", spans(&batch.query), vec![b, 2]));
        }
        inputs
    }

    /// Scores encoded pairs under `id` in token-budget batches sorted by length.
    pub fn score_pairs(
        &self,
        id: &str,
        pairs: &[EncodedPair],
        token_budget: usize,
    ) -> Result<Vec<f32>> {
        // Capped before batching, so batches fill the budget with the tokens that run.
        let capped: Vec<EncodedPair>;
        let pairs = match self.loaded(id)?.entry.passage_tokens {
            Some(cap) if pairs.iter().any(|p| p.passage.len > cap) => {
                capped = pairs.iter().map(|p| p.with_passage_cap(cap)).collect();
                &capped[..]
            }
            _ => pairs,
        };
        let mut out = vec![0f32; pairs.len()];
        for batch in crate::encoding::token_budget_batches(pairs, token_budget) {
            let chunk: Vec<EncodedPair> = batch.iter().map(|&i| pairs[i].clone()).collect();
            let padded = PaddedBatch::new(&chunk, self.encoder.pad_id);
            let scores = self.run(id, &padded)?;
            for (k, &i) in batch.iter().enumerate() {
                out[i] = scores[k];
            }
        }
        Ok(out)
    }
}

/// Reads the shared weights file once into ONNX Runtime tensors.
fn load_shared(
    dir: &Path,
    manifest: &Manifest,
    used: &std::collections::BTreeSet<&str>,
) -> Result<Vec<(String, Arc<DynValue>)>> {
    let Some(shared) = &manifest.shared_weights else {
        return Ok(Vec::new());
    };
    let path = dir.join(&shared.file);
    let bytes = std::fs::read(&path).map_err(|e| ModelsError::Manifest {
        path: path.clone(),
        message: format!("cannot read the shared weights: {e}"),
    })?;
    let mut out = Vec::with_capacity(shared.tensors.len());
    for t in shared
        .tensors
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
    {
        let end = t.offset + t.length;
        if end > bytes.len() || t.length != t.shape.iter().product::<usize>() * t.dtype.size() {
            return Err(ModelsError::Manifest {
                path: path.clone(),
                message: format!(
                    "tensor {} at bytes {}..{} does not fit the file ({} bytes) or its shape {:?} of {:?}; export again",
                    t.name,
                    t.offset,
                    end,
                    bytes.len(),
                    t.shape,
                    t.dtype
                ),
            });
        }
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let raw = &bytes[t.offset..end];
        let value = match t.dtype {
            ElementType::F32 => {
                let data: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Tensor::from_array((shape, data)).map(|t| t.into_dyn())
            }
            ElementType::I8 => {
                let data: Vec<i8> = raw.iter().map(|&b| b as i8).collect();
                Tensor::from_array((shape, data)).map(|t| t.into_dyn())
            }
        }
        .map_err(ort_err(&format!("shared weight {}", t.name)))?;
        out.push((t.name.clone(), Arc::new(value)));
    }
    Ok(out)
}

fn build_session(
    env: &Environment,
    graph: &Path,
    entry: &ConfigEntry,
    shared: &[(String, Arc<DynValue>)],
    prepacked: &PrepackedWeights,
    options: &RuntimeOptions,
) -> ort::Result<Session> {
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_prepacked_weights(prepacked)?;
    if options.cuda {
        builder = with_cuda(builder)?;
    } else {
        let cpu = ort::ep::CPU::default().with_arena_allocator(options.cpu_arena);
        builder = builder.with_execution_providers([cpu.build()])?;
    }
    for (name, value) in shared {
        if entry.shared.contains(name) {
            builder = builder.with_initializer(name, value.clone())?;
        }
    }
    builder.commit_from_file(graph)
}

/// Adds the CUDA execution provider (device 0), failing instead of silently falling back
/// to the CPU. TF32 stays off: scores must match the CPU engines within 1e-4.
#[cfg(feature = "cuda")]
pub fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    let cuda = ort::ep::CUDA::default().with_tf32(false);
    Ok(builder.with_execution_providers([cuda.build().error_on_failure()])?)
}

#[cfg(not(feature = "cuda"))]
pub fn with_cuda(
    _: ort::session::builder::SessionBuilder,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    Err(ort::Error::new(
        "this mrank was built without the `cuda` feature; rebuild with `--features cuda`",
    ))
}

/// The inputs of a graph with isolated segments (`export::forward::build_split`) from
/// joint BERT rows `[CLS] q [SEP] [CLS] p [SEP]` (`PairEncoder::with_isolated_segments`):
/// each distinct query segment `[CLS] q [SEP]` once (`query_ids`/`query_mask`, `[Q, Tq]`),
/// each row's passage segment `[CLS] p [SEP]` (`passage_ids`/`passage_mask`, `[B, Tp]`)
/// and the query row of each passage row.
/// Without `dedup` every row keeps its own query (`Q = B`; what a per-pair peer graph
/// takes). Returns (name, data, shape) in graph input order.
pub fn split_inputs(
    batch: &PaddedBatch,
    pad_id: u32,
    dedup: bool,
) -> Vec<(&'static str, Vec<i64>, Vec<i64>)> {
    let row = |r: usize| &batch.input_ids[r * batch.seq_len..r * batch.seq_len + batch.lengths[r]];
    // The passage's own `[CLS]` sits just before the passage.
    let segment_start = |r: usize| batch.passage[r].start.saturating_sub(1);
    let mut queries: Vec<&[u32]> = Vec::new();
    let mut seen: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    let mut query_index = Vec::with_capacity(batch.batch_size);
    for r in 0..batch.batch_size {
        let q = &row(r)[..segment_start(r)];
        let next = queries.len();
        let i = if dedup {
            *seen.entry(q).or_insert(next)
        } else {
            next
        };
        if i == next {
            queries.push(q);
        }
        query_index.push(i as i64);
    }
    let pad = |rows: &[&[u32]]| -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id as i64; rows.len() * t];
        let mut mask = vec![0i64; rows.len() * t];
        for (i, r) in rows.iter().enumerate() {
            for (j, &tok) in r.iter().enumerate() {
                ids[i * t + j] = tok as i64;
                mask[i * t + j] = 1;
            }
        }
        (ids, mask, vec![rows.len() as i64, t as i64])
    };
    let passages: Vec<&[u32]> = (0..batch.batch_size)
        .map(|r| &row(r)[segment_start(r)..])
        .collect();
    let (q_ids, q_mask, q_shape) = pad(&queries);
    let (p_ids, p_mask, p_shape) = pad(&passages);
    let b = batch.batch_size as i64;
    vec![
        ("query_ids", q_ids, q_shape.clone()),
        ("query_mask", q_mask, q_shape),
        ("passage_ids", p_ids, p_shape.clone()),
        ("passage_mask", p_mask, p_shape),
        ("query_index", query_index, vec![b]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{EncodedPair, Span};

    fn pair(query: &[u32], passage: &[u32]) -> EncodedPair {
        let mut ids = vec![101];
        ids.extend_from_slice(query);
        ids.extend([102, 101]);
        let start = ids.len();
        ids.extend_from_slice(passage);
        ids.push(102);
        EncodedPair {
            token_type_ids: vec![0; ids.len()],
            query: Span {
                start: 1,
                len: query.len(),
            },
            passage: Span {
                start,
                len: passage.len(),
            },
            score_pos: 0,
            input_ids: ids,
            prompt: None,
            truncated: false,
            keeps_end: false,
        }
    }

    #[test]
    fn split_inputs_encode_each_distinct_query_once() {
        let pairs = [
            pair(&[5, 6], &[9]),
            pair(&[7], &[8, 8, 8]),
            pair(&[5, 6], &[4, 4]),
        ];
        let batch = PaddedBatch::new(&pairs, 0);
        let inputs = split_inputs(&batch, 0, true);
        let per_row = split_inputs(&batch, 0, false);
        assert_eq!(per_row[0].2, vec![3, 4]);
        assert_eq!(per_row[4].1, vec![0, 1, 2]);
        let get = |name: &str| inputs.iter().find(|i| i.0 == name).unwrap();
        assert_eq!(get("query_ids").2, vec![2, 4]);
        assert_eq!(get("query_ids").1, vec![101, 5, 6, 102, 101, 7, 102, 0]);
        assert_eq!(get("query_mask").1, vec![1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(get("passage_ids").2, vec![3, 5]);
        assert_eq!(
            get("passage_ids").1,
            vec![101, 9, 102, 0, 0, 101, 8, 8, 8, 102, 101, 4, 4, 102, 0]
        );
        assert_eq!(get("query_index").1, vec![0, 1, 0]);
    }
}
