//! The trained part of a Matryoshka re-ranker, in one safetensors file: the per-layer
//! scoring heads and the LoRA sets of both training stages.
//!
//! - `sd`: stage 1's self-distillation LoRA, merged into the base weights at load;
//! - `v{from}-{to}`: stage 2's vertical (depth) adapter for depths `from..=to`;
//! - `h{ratio}`: stage 2's horizontal (width) adapter for one compression ratio.
//!
//! The adapter of sub-structure (d, r) is V_bucket(d) + H_r, as in the paper. Tensor
//! names: `head.{depth}.weight|bias`, `lora.{set}.{layer}.{proj}.a|b`; the header's
//! metadata records the base model shape (to refuse a file trained for another model),
//! the readout, the merge mode and the LoRA rank and alpha.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use models::{Dimensions, SubStructure};
use serde::{Deserialize, Serialize};

use crate::config::QueryWeights;
use crate::error::{Result, TrainerError};
use crate::forward::{Backbone, Heads, Readout};
use crate::idf::QueryIdf;
use crate::linear::{Linear, LoraBranch};
use crate::merge::MergeMode;

/// A LoRA pair being assembled while reading a file (A and B arrive separately).
type PendingLora = (Option<Tensor>, Option<Tensor>);

pub const FORMAT: &str = "mrank-adapters/1";

/// One LoRA set: (layer, projection) → (A `[r, in]`, B `[out, r]`).
pub type LoraSet = BTreeMap<(usize, String), (Tensor, Tensor)>;

/// What the header records about the run that made the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterMeta {
    pub format: String,
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub readout: String,
    pub merge_mode: String,
    /// Query and passage encoded in isolated segments (`Backbone::isolate_segments`);
    /// absent in files written before the option existed.
    #[serde(default)]
    pub isolate_segments: bool,
    /// How max-sim weighs the query tokens; with `idf` the file holds the idf table and
    /// each head's exponent (`idf::QueryIdf`). Absent in older files.
    #[serde(default)]
    pub query_weights: QueryWeights,
    pub rank: usize,
    pub alpha: f64,
    /// Depth buckets of the vertical adapters, inclusive ranges.
    pub depth_buckets: Vec<(usize, usize)>,
    /// `Checkpoint::fingerprint` of the base the adapters were trained on; absent in
    /// files written before it was recorded (those are checked by shape only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Adapters {
    pub meta: AdapterMeta,
    pub heads: Heads,
    pub sets: BTreeMap<String, LoraSet>,
}

pub fn merge_mode_name(mode: MergeMode) -> &'static str {
    match mode {
        MergeMode::Attention => "attention",
        MergeMode::Uniform => "uniform",
        MergeMode::Idf => "idf",
    }
}

pub fn parse_merge_mode(name: &str) -> Option<MergeMode> {
    match name {
        "attention" => Some(MergeMode::Attention),
        "uniform" => Some(MergeMode::Uniform),
        "idf" => Some(MergeMode::Idf),
        _ => None,
    }
}

impl Adapters {
    /// Heads only, no LoRA: with a span readout and unit head weights every depth scores
    /// the similarity of query and passage (the cosine of their means for span-product,
    /// the mean best token cosine for max-sim): the untrained starting point.
    pub fn untrained(
        architecture: &str,
        dims: &Dimensions,
        min_depth: usize,
        readout: Readout,
        head_scale: f32,
        device: &Device,
    ) -> Result<Self> {
        let mut heads = Heads::zeros(min_depth, dims.num_layers, dims.hidden_size, device)?;
        heads.readout = readout;
        if readout.reads_spans() {
            for head in heads.by_depth.values_mut() {
                head.weight = Tensor::full(head_scale, (1, dims.hidden_size), device)?;
            }
        }
        Ok(Adapters {
            meta: AdapterMeta {
                format: FORMAT.into(),
                architecture: architecture.into(),
                num_layers: dims.num_layers,
                hidden_size: dims.hidden_size,
                vocab_size: dims.vocab_size,
                readout: readout.name().into(),
                merge_mode: merge_mode_name(MergeMode::Attention).into(),
                isolate_segments: false,
                query_weights: QueryWeights::Uniform,
                rank: 0,
                alpha: 0.0,
                depth_buckets: Vec::new(),
                base_fingerprint: None,
            },
            heads,
            sets: BTreeMap::new(),
        })
    }

    /// The adapters a model runs with: the file at `path`, checked against the base, or
    /// without one the base's untrained unit heads (span-product readout) over its
    /// default sub-structure space.
    pub fn for_base(
        checkpoint: &models::Checkpoint,
        path: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let dims = checkpoint.config.dimensions();
        let architecture = checkpoint.config.variant_name();
        match path {
            Some(path) => {
                let a = Adapters::load(path, device)?;
                a.check_base(architecture, &dims, path)?;
                a.check_lora_shapes(&dims, path)?;
                a.check_fingerprint(checkpoint, path)?;
                Ok(a)
            }
            None => {
                let space = models::SubStructureSpace::default_for(dims.num_layers);
                Adapters::untrained(
                    architecture,
                    &dims,
                    space.min_depth,
                    Readout::SpanProduct,
                    1.0,
                    device,
                )
            }
        }
    }

    pub fn merge_mode(&self) -> MergeMode {
        parse_merge_mode(&self.meta.merge_mode).unwrap_or_default()
    }

    /// The vertical set serving depth `depth`, if any.
    pub fn vertical_set(&self, depth: usize) -> Option<String> {
        self.meta
            .depth_buckets
            .iter()
            .find(|(from, to)| (*from..=*to).contains(&depth))
            .map(|(from, to)| format!("v{from}-{to}"))
            .filter(|name| self.sets.contains_key(name))
    }

    /// Sets active for a sub-structure (beyond the merged `sd`).
    pub fn active_sets(&self, sub: &SubStructure) -> Vec<String> {
        let mut out: Vec<String> = self.vertical_set(sub.depth).into_iter().collect();
        let h = format!("h{}", sub.ratio);
        if sub.ratio > 1 && self.sets.contains_key(&h) {
            out.push(h);
        }
        out
    }

    /// Checks the file was trained for this base model.
    pub fn check_base(&self, architecture: &str, dims: &Dimensions, path: &Path) -> Result<()> {
        let m = &self.meta;
        if m.architecture != architecture
            || m.num_layers != dims.num_layers
            || m.hidden_size != dims.hidden_size
            || m.vocab_size != dims.vocab_size
        {
            return Err(TrainerError::Input(format!(
                "{}: adapters were trained for a {} model with {} layers, hidden size {} and vocabulary {}, but the base model is {} with {} layers, hidden size {} and vocabulary {}",
                path.display(),
                m.architecture,
                m.num_layers,
                m.hidden_size,
                m.vocab_size,
                architecture,
                dims.num_layers,
                dims.hidden_size,
                dims.vocab_size
            )));
        }
        Ok(())
    }

    /// Checks every LoRA pair fits the projection it names (`A [rank, in]`,
    /// `B [out, rank]`), so a file that passes `check_base` but was cut for another
    /// shape (or edited) is refused here, naming the tensor, instead of failing inside
    /// a matmul at the first forward pass.
    pub fn check_lora_shapes(&self, dims: &Dimensions, path: &Path) -> Result<()> {
        let attention = dims.num_heads * dims.head_dim;
        let kv = dims.num_kv_heads * dims.head_dim;
        let (hidden, mlp) = (dims.hidden_size, dims.intermediate_size);
        for (set, loras) in &self.sets {
            for ((layer, proj), (a, b)) in loras {
                let name = format!("lora.{set}.{layer}.{proj}");
                let (input, output) = match proj.as_str() {
                    "q" => (hidden, attention),
                    "k" | "v" => (hidden, kv),
                    "o" => (attention, hidden),
                    "gate" | "up" => (hidden, mlp),
                    "down" => (mlp, hidden),
                    other => {
                        return Err(TrainerError::Input(format!(
                            "{}: {name}: no projection is called {other:?}",
                            path.display()
                        )))
                    }
                };
                let rank = a.dim(0).unwrap_or(0);
                let fits = *layer < dims.num_layers
                    && a.dims() == [rank, input]
                    && b.dims() == [output, rank];
                if !fits {
                    return Err(TrainerError::Input(format!(
                        "{}: {name} has A {:?} and B {:?}, but layer {layer}'s {proj} projection of this base needs A [rank, {input}] and B [{output}, rank] (of {} layers)",
                        path.display(),
                        a.dims(),
                        b.dims(),
                        dims.num_layers
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks the base has the weights the adapters were trained on, when the file
    /// records them: a base of the same shape (another fine-tune, another model of the
    /// size) passes every shape check and would score nonsense.
    pub fn check_fingerprint(&self, checkpoint: &models::Checkpoint, path: &Path) -> Result<()> {
        let Some(trained_on) = &self.meta.base_fingerprint else {
            return Ok(());
        };
        let base = checkpoint.fingerprint()?;
        if &base != trained_on {
            return Err(TrainerError::Input(format!(
                "{}: the adapters were trained on other weights (fingerprint {trained_on}) than \
                 {} (fingerprint {base}): same shapes, different checkpoint. Use the base they \
                 were trained on, or train adapters for this one",
                path.display(),
                checkpoint.dir.display()
            )));
        }
        Ok(())
    }

    /// Folds a set into the base weights: `W += s · B A` (stage 1's `sd` at load time).
    pub fn merge_set_into(&self, set: &str, backbone: &mut dyn Backbone) -> Result<()> {
        let Some(loras) = self.sets.get(set) else {
            return Ok(());
        };
        let scale = self.meta.alpha / self.meta.rank.max(1) as f64;
        for (layer, name, linear) in backbone.projections_mut() {
            if let Some((a, b)) = loras.get(&(layer, name.to_string())) {
                linear.weight = (&linear.weight + (b.matmul(a)? * scale)?)?;
            }
        }
        Ok(())
    }

    /// Makes exactly `sets` the active LoRA branches of every projection.
    pub fn activate(&self, sets: &[String], backbone: &mut dyn Backbone) {
        let scale = self.meta.alpha / self.meta.rank.max(1) as f64;
        for (layer, name, linear) in backbone.projections_mut() {
            linear.lora = sets
                .iter()
                .filter_map(|s| self.sets.get(s)?.get(&(layer, name.to_string())))
                .map(|(a, b)| LoraBranch {
                    a: a.clone(),
                    b: b.clone(),
                    scale,
                })
                .collect();
        }
    }

    /// Every tensor under its file name (`head.*`, `lora.*`).
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (depth, head) in &self.heads.by_depth {
            tensors.push((format!("head.{depth}.weight"), head.weight.clone()));
            if let Some(b) = &head.bias {
                tensors.push((format!("head.{depth}.bias"), b.clone()));
            }
        }
        if let Some(idf) = &self.heads.query_idf {
            tensors.extend(idf.tensors()?);
        }
        for (set, loras) in &self.sets {
            for ((layer, proj), (a, b)) in loras {
                tensors.push((format!("lora.{set}.{layer}.{proj}.a"), a.clone()));
                tensors.push((format!("lora.{set}.{layer}.{proj}.b"), b.clone()));
            }
        }
        Ok(tensors)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.tensors()?;
        let mut metadata = HashMap::new();
        metadata.insert(
            "mrank".to_string(),
            serde_json::to_string(&self.meta).expect("metadata serializes"),
        );
        save_tensors(&tensors, Some(metadata), path)
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            TrainerError::Input(format!("{}: cannot read adapters: {e}", path.display()))
        })?;
        let bad = |why: String| {
            TrainerError::Input(format!(
                "{}: not an mrank adapters file: {why}",
                path.display()
            ))
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("mrank"))
            .ok_or_else(|| bad("no `mrank` metadata in the header".into()))?;
        let meta: AdapterMeta = serde_json::from_str(meta_json).map_err(|e| bad(e.to_string()))?;
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT:?}",
                meta.format
            )));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?;
        let readout = Readout::parse(&meta.readout)
            .ok_or_else(|| bad(format!("unknown readout {:?}", meta.readout)))?;
        let mut heads = Heads {
            readout,
            ..Heads::default()
        };
        let mut sets: BTreeMap<String, LoraSet> = BTreeMap::new();
        let mut pending: HashMap<(String, usize, String), PendingLora> = HashMap::new();
        for (name, tensor) in &tensors {
            let parts: Vec<&str> = name.split('.').collect();
            match parts.as_slice() {
                ["head", depth, "weight"] => {
                    let depth: usize = depth.parse().map_err(|_| bad(format!("tensor {name}")))?;
                    let bias = tensors.get(&format!("head.{depth}.bias")).cloned();
                    heads
                        .by_depth
                        .insert(depth, Linear::new(tensor.to_dtype(DType::F32)?, bias));
                }
                ["head", _, "bias"]
                | ["head", _, "idf_power"]
                | ["idf", "log"]
                | ["idf", "merge_power"] => {}
                ["lora", set, layer, proj, which] => {
                    let layer: usize = layer.parse().map_err(|_| bad(format!("tensor {name}")))?;
                    let entry = pending
                        .entry((set.to_string(), layer, proj.to_string()))
                        .or_default();
                    match *which {
                        "a" => entry.0 = Some(tensor.clone()),
                        "b" => entry.1 = Some(tensor.clone()),
                        _ => return Err(bad(format!("tensor {name}"))),
                    }
                }
                _ => return Err(bad(format!("unexpected tensor {name}"))),
            }
        }
        for ((set, layer, proj), (a, b)) in pending {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("LoRA {set}.{layer}.{proj} lacks A or B")));
            };
            sets.entry(set).or_default().insert((layer, proj), (a, b));
        }
        if heads.by_depth.is_empty() {
            return Err(bad("no scoring heads".into()));
        }
        heads.query_idf = QueryIdf::from_tensors(&tensors, heads.by_depth.keys().copied())
            .map_err(|e| bad(e.to_string()))?;
        match (meta.query_weights, &heads.query_idf) {
            (QueryWeights::Uniform, None) => {
                if meta.merge_mode == "idf" {
                    return Err(bad("idf merging but no idf table".into()));
                }
            }
            (QueryWeights::Idf, Some(idf)) => {
                if idf.log_idf.dims1()? != meta.vocab_size {
                    return Err(bad(format!(
                        "the idf table has {} entries for a vocabulary of {}",
                        idf.log_idf.dims1()?,
                        meta.vocab_size
                    )));
                }
                if readout != Readout::MaxSim {
                    return Err(bad(format!(
                        "idf query weights need the max-sim readout, not {}",
                        readout.name()
                    )));
                }
            }
            (QueryWeights::Idf, None) => {
                return Err(bad("query_weights is idf but there is no idf table".into()))
            }
            (QueryWeights::Uniform, Some(_)) => {
                return Err(bad("an idf table but query_weights is uniform".into()))
            }
        }
        Ok(Adapters { meta, heads, sets })
    }
}

/// Writes f32 tensors (plus optional header metadata) as safetensors, atomically: a
/// crash mid-write leaves the previous file intact.
pub fn save_tensors(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let data: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name.clone(), t.dims().to_vec(), bytes))
        })
        .collect::<Result<_>>()?;
    let views = owned
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainerError::Input(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| TrainerError::Input(format!("{}: {e}", tmp.display())))?;
    // safetensors creates files private to the user; adapters are shared artifacts.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| TrainerError::Input(format!("{}: {e}", path.display())))?;
    Ok(())
}
