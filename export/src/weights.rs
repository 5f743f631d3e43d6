//! Weights as the graphs need them: base tensors from the checkpoint with stage 1's
//! `sd` adapter folded in (the trainer does the same at load), laid out `[in, out]` for
//! `MatMul`, and the active stage-2 adapters of a configuration as low-rank branches
//! (or folded into a per-configuration copy when merging is asked for).

use candle_core::{Device, Tensor};
use models::{Checkpoint, Configuration, Precision};
use trainer::adapters::Adapters;

use crate::blocks::{quantize_columns, Projection, ProjectionWeight, QueryIdfWeights};
use crate::error::Result;
use crate::graph::GraphBuilder;

pub struct ModelWeights<'a> {
    pub checkpoint: &'a Checkpoint,
    pub adapters: &'a Adapters,
    /// Stage-2 sets of the configuration being exported (V_d and H_r).
    pub active_sets: Vec<String>,
    /// The vertical set, folded into the shared weights: every configuration of a depth
    /// bucket uses the same V, so the fold costs one weight copy per bucket, and full-width
    /// configurations run with no branch at all.
    pub vertical: Option<String>,
    /// Fold active sets into per-configuration weights instead of branches.
    pub merge_adapters: bool,
    /// f32 projections, or int8 (quantized after every fold).
    pub precision: Precision,
    pub config_id: String,
    device: Device,
}

impl<'a> ModelWeights<'a> {
    pub fn new(
        checkpoint: &'a Checkpoint,
        adapters: &'a Adapters,
        config: &Configuration,
        config_id: &str,
        merge_adapters: bool,
    ) -> Self {
        ModelWeights {
            checkpoint,
            adapters,
            active_sets: adapters.active_sets(&config.sub),
            vertical: adapters.vertical_set(config.sub.depth),
            merge_adapters,
            precision: config.precision,
            config_id: config_id.into(),
            device: Device::Cpu,
        }
    }

    /// A tensor by canonical name, as stored (f32).
    pub fn raw(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.checkpoint.tensor(name)?;
        Ok((t.shape, t.data))
    }

    /// A shared graph weight straight from the checkpoint (norms, embeddings, biases).
    pub fn shared(&self, g: &mut GraphBuilder, name: &str) -> Result<String> {
        let (shape, data) = self.raw(name)?;
        Ok(g.weight(name, &shape, &data))
    }

    /// A shared weight transformed on the way (e.g. Gemma's `1 + weight` norms).
    pub fn shared_mapped(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        graph_name: &str,
        f: impl Fn(f32) -> f32,
    ) -> Result<String> {
        let (shape, data) = self.raw(name)?;
        let data: Vec<f32> = data.into_iter().map(f).collect();
        Ok(g.weight(graph_name, &shape, &data))
    }

    fn lora_scale(&self) -> f64 {
        self.adapters.meta.alpha / self.adapters.meta.rank.max(1) as f64
    }

    /// `W + s·B·A` for every set in `sets` that touches (layer, proj), `[out, in]`.
    fn folded(&self, weight: Tensor, layer: usize, proj: &str, sets: &[String]) -> Result<Tensor> {
        let mut w = weight;
        for set in sets {
            if let Some((a, b)) = self
                .adapters
                .sets
                .get(set)
                .and_then(|s| s.get(&(layer, proj.to_string())))
            {
                w = (&w + (b.matmul(a)? * self.lora_scale())?)?;
            }
        }
        Ok(w)
    }

    /// The projection `prefix` (= layer `layer`'s `proj`) of the configuration.
    pub fn projection(
        &self,
        g: &mut GraphBuilder,
        layer: usize,
        proj: &str,
        prefix: &str,
        bias: bool,
    ) -> Result<Projection> {
        let (shape, data) = self.raw(&format!("{prefix}.weight"))?;
        let w = Tensor::from_vec(data, (shape[0], shape[1]), &self.device)?;
        let mut base_sets = vec!["sd".to_string()];
        base_sets.extend(self.vertical.clone());
        let w = self.folded(w, layer, proj, &base_sets)?;
        let branch_sets: Vec<String> = self
            .active_sets
            .iter()
            .filter(|s| Some(*s) != self.vertical.as_ref())
            .cloned()
            .collect();
        let bias = if bias {
            Some(self.shared(g, &format!("{prefix}.bias"))?)
        } else {
            None
        };
        let transposed =
            |t: &Tensor| -> Result<Vec<f32>> { Ok(t.t()?.contiguous()?.flatten_all()?.to_vec1()?) };
        let dims = [shape[1], shape[0]];
        if self.merge_adapters {
            let merged = self.folded(w, layer, proj, &branch_sets)?;
            let name = format!("{prefix}.weight_t@{}", self.config_id);
            let weight = self.base_weight(g, &name, &dims, &transposed(&merged)?, false);
            return Ok(Projection {
                weight,
                bias,
                lora: None,
            });
        }
        let shared_name = match &self.vertical {
            Some(v) => format!("{prefix}.weight_t+{v}"),
            None => format!("{prefix}.weight_t"),
        };
        let weight = self.base_weight(g, &shared_name, &dims, &transposed(&w)?, true);
        // Active branches, concatenated along the rank: one pair of MatMuls.
        let mut a_parts = Vec::new();
        let mut b_parts = Vec::new();
        for set in &branch_sets {
            if let Some((a, b)) = self
                .adapters
                .sets
                .get(set)
                .and_then(|s| s.get(&(layer, proj.to_string())))
            {
                a_parts.push(a.t()?);
                b_parts.push((b.t()? * self.lora_scale())?);
            }
        }
        let lora = if a_parts.is_empty() {
            None
        } else {
            let a = Tensor::cat(&a_parts, 1)?.contiguous()?; // [in, R]
            let b = Tensor::cat(&b_parts, 0)?.contiguous()?; // [R, out]
            let key = branch_sets.join("+");
            // Shared like the base weights: every configuration of a ratio uses the same
            // horizontal set, so it is loaded (and pre-packed) once.
            let a_name = g.weight(
                &format!("lora.{key}.{layer}.{proj}.a_t"),
                &[a.dim(0)?, a.dim(1)?],
                &a.flatten_all()?.to_vec1()?,
            );
            let b_name = g.weight(
                &format!("lora.{key}.{layer}.{proj}.b_t"),
                &[b.dim(0)?, b.dim(1)?],
                &b.flatten_all()?.to_vec1()?,
            );
            Some((a_name, b_name))
        };
        Ok(Projection { weight, bias, lora })
    }

    /// A projection's base weight `[in, out]` at this configuration's precision, in the
    /// shared file (`shared`) or this graph's own. int8 weights are named apart from the
    /// f32 ones, so f32 and int8 configurations of one export share nothing but can
    /// each share with their own kind.
    fn base_weight(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        dims: &[usize; 2],
        values: &[f32],
        shared: bool,
    ) -> ProjectionWeight {
        match self.precision {
            Precision::F32 if shared => ProjectionWeight::F32(g.weight(name, dims, values)),
            Precision::F32 => ProjectionWeight::F32(g.inline_weight(name, dims, values)),
            Precision::Int8 => {
                let (q, scale) = quantize_columns(values, dims[0], dims[1]);
                let (qn, sn) = (format!("{name}.int8"), format!("{name}.int8_scale"));
                if shared {
                    ProjectionWeight::Int8 {
                        weight: g.weight_i8(&qn, dims, &q),
                        scale: g.weight(&sn, &[dims[1]], &scale),
                    }
                } else {
                    ProjectionWeight::Int8 {
                        weight: g.inline_weight_i8(&qn, dims, &q),
                        scale: g.inline_weight(&sn, &[dims[1]], &scale),
                    }
                }
            }
        }
    }

    /// Query, key and value of layer `layer` packed as one `[in, 3·out]` weight and
    /// `[3·out]` bias (ONNX Runtime's fused `Attention` or `QAttention` input), when
    /// none of them carries a LoRA branch in this configuration.
    pub fn packed_qkv(
        &self,
        g: &mut GraphBuilder,
        layer: usize,
        prefixes: [&str; 3],
    ) -> Result<Option<(ProjectionWeight, String)>> {
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for (proj, prefix) in ["q", "k", "v"].iter().zip(prefixes) {
            let (shape, data) = self.raw(&format!("{prefix}.weight"))?;
            let w = Tensor::from_vec(data, (shape[0], shape[1]), &self.device)?;
            let mut base_sets = vec!["sd".to_string()];
            base_sets.extend(self.vertical.clone());
            let w = self.folded(w, layer, proj, &base_sets)?;
            let branch = self.active_sets.iter().any(|s| {
                Some(s) != self.vertical.as_ref()
                    && self
                        .adapters
                        .sets
                        .get(s)
                        .is_some_and(|set| set.contains_key(&(layer, proj.to_string())))
            });
            if branch {
                return Ok(None);
            }
            ws.push(w.t()?);
            let (_, b) = self.raw(&format!("{prefix}.bias"))?;
            bs.extend(b);
        }
        let packed = Tensor::cat(&ws, 1)?.contiguous()?; // [in, 3·out]
        let suffix = self
            .vertical
            .as_deref()
            .map(|v| format!("+{v}"))
            .unwrap_or_default();
        let base = prefixes[0].trim_end_matches(".query");
        let w = self.base_weight(
            g,
            &format!("{base}.qkv.weight_t{suffix}"),
            &[packed.dim(0)?, packed.dim(1)?],
            &packed.flatten_all()?.to_vec1()?,
            true,
        );
        let b = g.weight(&format!("{base}.qkv.bias"), &[bs.len()], &bs);
        Ok(Some((w, b)))
    }

    /// The idf weighting of the query tokens that the head of `depth` learned
    /// (`trainer::idf::QueryIdf`): the table is shared by all graphs, the exponent is
    /// inline. `None` for uniform query weights.
    pub fn query_idf(&self, g: &mut GraphBuilder, depth: usize) -> Result<Option<QueryIdfWeights>> {
        let Some(idf) = &self.adapters.heads.query_idf else {
            return Ok(None);
        };
        let power = idf.power.get(&depth).ok_or_else(|| {
            crate::error::ExportError::Input(format!(
                "the adapters' idf weighting has no exponent for depth {depth}"
            ))
        })?;
        let log_idf = idf_table(g, idf)?;
        let power: Vec<f32> = power.flatten_all()?.to_vec1()?;
        let power = g.inline_weight(&format!("head.{depth}.idf_power"), &[1], &power);
        Ok(Some(QueryIdfWeights { log_idf, power }))
    }

    /// The weights of idf merging (`MergeMode::Idf`): `(idf.log [V], β [1])`.
    pub fn merge_idf(&self, g: &mut GraphBuilder) -> Result<(String, String)> {
        let idf = self.adapters.heads.query_idf.as_ref().ok_or_else(|| {
            crate::error::ExportError::Input(
                "the adapters merge by idf but have no idf table".into(),
            )
        })?;
        let log_idf = idf_table(g, idf)?;
        let beta = g.inline_weight("idf.merge_power", &[1], &[idf.merge_power]);
        Ok((log_idf, beta))
    }

    /// The head of `depth`: `(weight_t [H, 1], bias [1])`, inline in the graph.
    pub fn head(&self, g: &mut GraphBuilder, depth: usize) -> Result<(String, Option<String>)> {
        let head = self.adapters.heads.by_depth.get(&depth).ok_or_else(|| {
            crate::error::ExportError::Input(format!(
                "the adapters have no scoring head for depth {depth} (heads exist for {:?})",
                self.adapters.heads.by_depth.keys().collect::<Vec<_>>()
            ))
        })?;
        let w: Vec<f32> = head.weight.flatten_all()?.to_vec1()?;
        let weight_t = g.inline_weight(&format!("head.{depth}.weight_t"), &[w.len(), 1], &w);
        let bias = match &head.bias {
            Some(b) => {
                let b: Vec<f32> = b.flatten_all()?.to_vec1()?;
                Some(g.inline_weight(&format!("head.{depth}.bias"), &[b.len()], &b))
            }
            None => None,
        };
        Ok((weight_t, bias))
    }
}

/// The idf table (`idf.log`, [V]) as one graph weight, shared by query weighting and idf
/// merging: the builder's cache writes it once however many blocks ask.
fn idf_table(g: &mut GraphBuilder, idf: &trainer::idf::QueryIdf) -> Result<String> {
    let table: Vec<f32> = idf.log_idf.to_vec1()?;
    Ok(g.weight("idf.log", &[table.len()], &table))
}
