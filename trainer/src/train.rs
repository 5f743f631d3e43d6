//! The two-stage Matryoshka training loop.
//!
//! Phases, in order: `stage1` (cascaded self-distillation: LoRA `sd` + heads, random
//! width per step, every depth scored, each sub-structure distilled from its
//! super-structure's detached scores), `vertical` (stage 2: `sd` merged, one LoRA per
//! depth bucket trained at full width), then `horizontal-r{r}` for each ratio (one LoRA
//! per ratio trained with merging, on top of the frozen vertical adapters).
//!
//! Determinism: every random choice of step `s` in phase `p` comes from an RNG seeded
//! by (seed, p, s), and the checkpoint stores every trainable tensor and optimizer
//! moment, so `--resume` reproduces an uninterrupted run exactly.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use models::{Checkpoint, PaddedBatch, PairEncoder, SubStructure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::adapters::{save_tensors, AdapterMeta, Adapters, LoraSet, FORMAT};
use crate::config::{QueryWeights, Teacher, TrainConfig};
use crate::data::{read_candidates, Qrels, QueryCandidates};
use crate::error::{Result, TrainerError};
use crate::forward::{forward, Backbone, Heads, ModelInput, Readout};
use crate::idf::QueryIdf;
use crate::linear::{Linear, LoraBranch};
use crate::optim::{AdamW, ParamGroup};

/// A labelled query: candidate indices by role.
struct LabeledQuery {
    query: QueryCandidates,
    positives: Vec<usize>,
    negatives: Vec<usize>,
}

pub struct TrainData {
    labeled: Vec<LabeledQuery>,
    unlabeled: Vec<QueryCandidates>,
    /// qid → teacher score of each candidate (in candidate order).
    teacher: HashMap<String, Vec<f32>>,
}

/// One training group: passages[0] is the positive when `labeled`.
struct Group {
    query: String,
    passages: Vec<String>,
    labeled: bool,
    teacher: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Stage1,
    Vertical,
    Horizontal(usize),
}

impl Phase {
    pub fn name(&self) -> String {
        match self {
            Phase::Stage1 => "stage1".into(),
            Phase::Vertical => "vertical".into(),
            Phase::Horizontal(r) => format!("horizontal-r{r}"),
        }
    }
}

pub fn phases(cfg: &TrainConfig) -> Vec<(Phase, usize)> {
    let mut out = vec![
        (Phase::Stage1, cfg.stage1.steps),
        (Phase::Vertical, cfg.stage2.vertical_steps),
    ];
    for &r in &cfg.space.ratios {
        out.push((Phase::Horizontal(r), cfg.stage2.horizontal_steps));
    }
    out.into_iter().filter(|(_, steps)| *steps > 0).collect()
}

/// Loads training data: labelled files with their qrels, unlabeled files. Queries
/// without a positive are dropped; judged queries missing from the files are counted.
pub fn load_data(cfg: &TrainConfig) -> Result<(TrainData, Vec<String>)> {
    let mut notes = Vec::new();
    if cfg.data.train.len() != cfg.data.qrels.len() {
        return Err(TrainerError::Input(format!(
            "training config: data.train has {} files but data.qrels has {}; give one qrels file per labelled file",
            cfg.data.train.len(),
            cfg.data.qrels.len()
        )));
    }
    // Teacher scores and the idf table are keyed by query id, so a query may appear in
    // one training file only (within a file, `read_candidates` already refuses repeats).
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut once = |file: &str, queries: &[QueryCandidates]| -> Result<()> {
        for q in queries {
            if let Some(first) = seen.insert(q.qid.clone(), file.to_string()) {
                return Err(TrainerError::Input(format!(
                    "{file}: query {} is also in {first}; give each query to one training file",
                    q.qid
                )));
            }
        }
        Ok(())
    };
    let mut labeled = Vec::new();
    for (file, qrels_file) in cfg.data.train.iter().zip(&cfg.data.qrels) {
        let queries = read_candidates(Path::new(file))?;
        once(file, &queries)?;
        let qrels = Qrels::read(Path::new(qrels_file))?;
        let unknown = qrels.unknown_queries(&queries);
        if unknown > 0 {
            notes.push(format!(
                "warning: {qrels_file}: {unknown} judged queries are not in {file}; ignored"
            ));
        }
        let mut dropped = 0;
        for q in queries {
            let grades: Vec<u32> = q
                .candidates
                .iter()
                .map(|c| qrels.grade(&q.qid, &c.docid))
                .collect();
            let positives: Vec<usize> = (0..grades.len())
                .filter(|&i| grades[i] >= cfg.data.positive_grade)
                .collect();
            let negatives: Vec<usize> = (0..grades.len()).filter(|&i| grades[i] == 0).collect();
            if positives.is_empty() || negatives.is_empty() || !qrels.by_query.contains_key(&q.qid)
            {
                dropped += 1;
                continue;
            }
            labeled.push(LabeledQuery {
                query: q,
                positives,
                negatives,
            });
        }
        if dropped > 0 {
            notes.push(format!("{file}: {dropped} queries without a grade-{}+ positive or without negatives are not used for labels", cfg.data.positive_grade));
        }
    }
    let mut unlabeled = Vec::new();
    for file in &cfg.data.unlabeled {
        let queries = read_candidates(Path::new(file))?;
        once(file, &queries)?;
        unlabeled.extend(queries);
    }
    if labeled.is_empty() && unlabeled.is_empty() {
        return Err(TrainerError::Input(
            "training config: no training data (data.train and data.unlabeled are empty)".into(),
        ));
    }
    Ok((
        TrainData {
            labeled,
            unlabeled,
            teacher: HashMap::new(),
        },
        notes,
    ))
}

fn step_rng(seed: u64, phase: usize, step: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((phase as u64) << 40) ^ step as u64,
    )
}

/// Draws a group: labelled (one positive, negatives) or unlabeled (random candidates).
/// Unlabeled groups are only drawn when some distillation term can use them.
fn sample_group(
    data: &TrainData,
    cfg: &TrainConfig,
    rng: &mut StdRng,
    labels_allowed: bool,
    unlabeled_allowed: bool,
) -> Group {
    let use_unlabeled = unlabeled_allowed
        && !data.unlabeled.is_empty()
        && (data.labeled.is_empty()
            || !labels_allowed
            || rng.random_bool(cfg.data.unlabeled_fraction.clamp(0.0, 1.0)));
    let n = cfg.data.group_size;
    if use_unlabeled {
        let q = &data.unlabeled[rng.random_range(0..data.unlabeled.len())];
        let picks =
            rand::seq::index::sample(rng, q.candidates.len(), n.min(q.candidates.len())).into_vec();
        return Group {
            query: q.query.clone(),
            passages: picks
                .iter()
                .map(|&i| q.candidates[i].text.clone())
                .collect(),
            labeled: false,
            teacher: data
                .teacher
                .get(&q.qid)
                .map(|t| picks.iter().map(|&i| t[i]).collect()),
        };
    }
    let lq = &data.labeled[rng.random_range(0..data.labeled.len())];
    let pos = lq.positives[rng.random_range(0..lq.positives.len())];
    let mut picks = vec![pos];
    if lq.negatives.len() >= n - 1 {
        picks.extend(
            rand::seq::index::sample(rng, lq.negatives.len(), n - 1)
                .into_iter()
                .map(|i| lq.negatives[i]),
        );
    } else {
        picks.extend((0..n - 1).map(|_| lq.negatives[rng.random_range(0..lq.negatives.len())]));
    }
    let q = &lq.query;
    Group {
        query: q.query.clone(),
        passages: picks
            .iter()
            .map(|&i| q.candidates[i].text.clone())
            .collect(),
        labeled: true,
        teacher: data
            .teacher
            .get(&q.qid)
            .map(|t| picks.iter().map(|&i| t[i]).collect()),
    }
}

/// Cross-entropy with the first entry as the target.
fn ce_first(scores: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(scores, D::Minus1)?;
    Ok(log_probs.get(0)?.neg()?)
}

/// Soft cross-entropy of `student` logits against `target` logits.
fn soft_ce(student: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax(target, D::Minus1)?;
    let log_q = candle_nn::ops::log_softmax(student, D::Minus1)?;
    Ok((p * log_q)?.sum_all()?.neg()?)
}

/// Host-seeded LoRA initialisation: A uniform in ±1/sqrt(in), B zero.
fn new_lora(
    rng: &mut StdRng,
    in_dim: usize,
    out_dim: usize,
    rank: usize,
    device: &Device,
) -> Result<(Var, Var)> {
    let bound = 1.0 / (in_dim as f32).sqrt();
    let a: Vec<f32> = (0..rank * in_dim)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let a = Var::from_tensor(&Tensor::from_vec(a, (rank, in_dim), device)?)?;
    let b = Var::from_tensor(&Tensor::zeros((out_dim, rank), DType::F32, device)?)?;
    Ok((a, b))
}

/// The idf table of every distinct training passage (labelled and unlabeled
/// candidates, each docid once), with an exponent for every head's depth.
fn training_passage_idf(
    data: &TrainData,
    encoder: &PairEncoder,
    dims: &models::Dimensions,
    heads: &Heads,
    merge_power: f32,
    device: &Device,
) -> Result<QueryIdf> {
    let mut seen = std::collections::HashSet::new();
    let mut documents = Vec::new();
    let queries = data
        .labeled
        .iter()
        .map(|l| &l.query)
        .chain(data.unlabeled.iter());
    for q in queries {
        for c in &q.candidates {
            if seen.insert(c.docid.as_str()) {
                documents.push(encoder.tokens(&c.text)?);
            }
        }
    }
    QueryIdf::from_documents(
        documents.iter().map(|d| d.as_slice()),
        dims.vocab_size,
        heads.by_depth.keys().copied(),
        merge_power,
        device,
    )
}

/// Trainable LoRA of one set: (layer, projection) → (A, B).
type LoraVars = BTreeMap<(usize, String), (Var, Var)>;

pub struct Trainer {
    pub cfg: TrainConfig,
    pub out_dir: PathBuf,
    backbone: Box<dyn Backbone + Send + Sync>,
    encoder: PairEncoder,
    device: Device,
    meta: AdapterMeta,
    /// Heads (trained in stage 1, frozen after).
    heads: Heads,
    head_vars: BTreeMap<usize, (Var, Var)>,
    /// Each head's idf exponent (`model.query_weights = "idf"`), trained with the heads.
    idf_power_vars: BTreeMap<usize, Var>,
    /// Finished LoRA sets.
    sets: BTreeMap<String, LoraSet>,
    /// LoRA vars of the current phase: set name → (layer, proj) → (A, B).
    lora_vars: BTreeMap<String, LoraVars>,
    opt: Option<AdamW>,
    pub phase_index: usize,
    pub step: usize,
    data: TrainData,
    log: Option<std::fs::File>,
    /// Whether `sd` has been folded into the base weights of `backbone`.
    sd_merged: bool,
    /// Stop (after checkpointing) once this many steps ran in this process; for tests
    /// of `--resume` and for time-boxed runs.
    pub stop_after: Option<usize>,
}

/// What the caller sees after each step (for progress display).
pub struct StepReport {
    pub phase: String,
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub pairs_per_second: f64,
}

impl Trainer {
    /// Layers of the model being trained.
    pub fn num_layers(&self) -> usize {
        self.backbone.num_layers()
    }

    /// Builds a trainer on `base`; `data` comes from `load_data` (teacher scores are
    /// computed here when configured, and cached in the output directory).
    pub fn new(
        cfg: TrainConfig,
        base: &Path,
        out_dir: &Path,
        data: TrainData,
        device: &Device,
    ) -> Result<Self> {
        Self::with_model_teacher(cfg, base, out_dir, data, device, None)
    }

    /// `new`, scoring a `model` teacher with `model_teacher` instead of the candle
    /// forward when its cache misses.
    pub fn with_model_teacher(
        cfg: TrainConfig,
        base: &Path,
        out_dir: &Path,
        mut data: TrainData,
        device: &Device,
        model_teacher: Option<&ModelTeacher>,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(base)?;
        let mut cfg = cfg;
        let dims = checkpoint.config.dimensions();
        cfg.resolve(dims.num_layers)?;
        let mut backbone = crate::families::load_backbone(&checkpoint, device)?;
        backbone.isolate_segments(cfg.model.isolate_segments)?;
        let encoder = PairEncoder::new(&checkpoint, cfg.model.max_length)?
            .with_isolated_segments(cfg.model.isolate_segments)?;
        let readout = Readout::parse(&cfg.model.readout).expect("resolve checked the readout");
        let architecture = checkpoint.config.variant_name().to_string();
        let untrained = Adapters::untrained(
            &architecture,
            &dims,
            cfg.space.min_depth,
            readout,
            cfg.model.head_scale,
            device,
        )?;
        let mut meta = untrained.meta.clone();
        meta.merge_mode = cfg.model.merge_mode.clone();
        meta.isolate_segments = cfg.model.isolate_segments;
        meta.rank = cfg.lora.rank;
        meta.alpha = cfg.lora.alpha;
        meta.depth_buckets = cfg.stage2.depth_buckets.clone();
        meta.base_fingerprint = Some(checkpoint.fingerprint()?);
        meta.format = FORMAT.into();
        data.teacher = teacher_scores(
            &cfg.data,
            base,
            backbone.as_ref(),
            &encoder,
            &data,
            cfg.model.max_length,
            out_dir,
            device,
            model_teacher,
        )?;
        meta.query_weights = cfg.model.query_weights;
        let mut head_vars = BTreeMap::new();
        let mut idf_power_vars = BTreeMap::new();
        let mut heads = untrained.heads.clone();
        if cfg.model.query_weights == QueryWeights::Idf {
            let mut idf = training_passage_idf(
                &data,
                &encoder,
                &dims,
                &heads,
                cfg.model.merge_idf_power,
                device,
            )?;
            for (&depth, power) in idf.power.iter_mut() {
                let var = Var::from_tensor(power)?;
                *power = var.as_tensor().clone();
                idf_power_vars.insert(depth, var);
            }
            heads.query_idf = Some(idf);
        }
        for (&depth, head) in heads.by_depth.iter_mut() {
            let w = Var::from_tensor(&head.weight)?;
            let b = Var::from_tensor(head.bias.as_ref().expect("untrained heads have a bias"))?;
            *head = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
            head_vars.insert(depth, (w, b));
        }
        std::fs::create_dir_all(out_dir)
            .map_err(|e| TrainerError::Input(format!("{}: {e}", out_dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out_dir.join("log.jsonl"))
            .map_err(|e| {
                TrainerError::Input(format!("{}: {e}", out_dir.join("log.jsonl").display()))
            })?;
        Ok(Trainer {
            cfg,
            out_dir: out_dir.to_path_buf(),
            backbone,
            encoder,
            device: device.clone(),
            meta,
            heads,
            head_vars,
            idf_power_vars,
            sets: BTreeMap::new(),
            lora_vars: BTreeMap::new(),
            opt: None,
            phase_index: 0,
            step: 0,
            data,
            log: Some(log),
            sd_merged: false,
            stop_after: None,
        })
    }

    pub fn phases(&self) -> Vec<(Phase, usize)> {
        phases(&self.cfg)
    }

    fn scale(&self) -> f64 {
        self.cfg.lora.alpha / self.cfg.lora.rank as f64
    }

    /// The LoRA sets a phase trains.
    fn phase_sets(&self, phase: &Phase) -> Vec<String> {
        match phase {
            Phase::Stage1 => vec!["sd".into()],
            Phase::Vertical => self
                .cfg
                .stage2
                .depth_buckets
                .iter()
                .map(|(a, b)| format!("v{a}-{b}"))
                .collect(),
            Phase::Horizontal(r) => vec![format!("h{r}")],
        }
    }

    /// Creates the trainable LoRA sets and optimizer of the current phase.
    fn start_phase(&mut self) -> Result<()> {
        let phase = self.phases()[self.phase_index].0.clone();
        let mut rng = step_rng(self.cfg.run.seed, self.phase_index, usize::MAX);
        if phase != Phase::Stage1 && !self.sd_merged {
            let adapters = self.adapters_snapshot()?;
            adapters.merge_set_into("sd", self.backbone.as_mut())?;
            self.sd_merged = true;
        }
        let set_names = self.phase_sets(&phase);
        let rank = self.cfg.lora.rank;
        let targets = self.cfg.lora.targets.clone();
        let device = self.device.clone();
        self.lora_vars.clear();
        for name in set_names {
            let mut set = BTreeMap::new();
            for (layer, proj, linear) in self.backbone.projections_mut() {
                if targets.iter().any(|t| t == proj) {
                    let vars =
                        new_lora(&mut rng, linear.in_dim(), linear.out_dim(), rank, &device)?;
                    set.insert((layer, proj.to_string()), vars);
                }
            }
            self.lora_vars.insert(name, set);
        }
        let mut groups = vec![ParamGroup {
            vars: self
                .lora_vars
                .values()
                .flat_map(|s| s.values().flat_map(|(a, b)| [a.clone(), b.clone()]))
                .collect(),
            lr: if phase == Phase::Stage1 {
                self.cfg.stage1.lr
            } else {
                self.cfg.stage2.lr
            },
        }];
        if phase == Phase::Stage1 {
            groups.push(ParamGroup {
                vars: self
                    .head_vars
                    .values()
                    .flat_map(|(w, b)| [w.clone(), b.clone()])
                    .collect(),
                lr: self.cfg.stage1.head_lr,
            });
            if !self.idf_power_vars.is_empty() {
                groups.push(ParamGroup {
                    vars: self.idf_power_vars.values().cloned().collect(),
                    lr: self.cfg.stage1.idf_power_lr,
                });
            }
        }
        self.opt = Some(AdamW::new(groups)?);
        Ok(())
    }

    /// Attaches, on every projection, the given trainable sets plus frozen finished sets.
    fn attach(&mut self, trainable: &[String], frozen: &[String]) {
        let scale = self.scale();
        let lora_vars = &self.lora_vars;
        let sets = &self.sets;
        for (layer, proj, linear) in self.backbone.projections_mut() {
            let key = (layer, proj.to_string());
            let mut branches = Vec::new();
            for name in frozen {
                if let Some((a, b)) = sets.get(name).and_then(|s| s.get(&key)) {
                    branches.push(LoraBranch {
                        a: a.clone(),
                        b: b.clone(),
                        scale,
                    });
                }
            }
            for name in trainable {
                if let Some((a, b)) = lora_vars.get(name).and_then(|s| s.get(&key)) {
                    branches.push(LoraBranch {
                        a: a.as_tensor().clone(),
                        b: b.as_tensor().clone(),
                        scale,
                    });
                }
            }
            linear.lora = branches;
        }
    }

    fn encode_group(&self, group: &Group) -> Result<Vec<models::EncodedPair>> {
        Ok(group
            .passages
            .iter()
            .map(|p| self.encoder.encode(&group.query, p, None))
            .collect::<models::Result<Vec<_>>>()?)
    }

    fn model_input(&self, pairs: &[models::EncodedPair]) -> Result<ModelInput> {
        ModelInput::new(&PaddedBatch::new(pairs, self.encoder.pad_id), &self.device)
    }

    /// Runs one step of the current phase; returns the loss.
    pub fn train_step(&mut self) -> Result<(f64, BTreeMap<String, f64>)> {
        let phases = self.phases();
        let (phase, steps) = phases[self.phase_index].clone();
        let mut rng = step_rng(self.cfg.run.seed, self.phase_index, self.step);
        let num_layers = self.backbone.num_layers();
        let min_depth = self.cfg.space.min_depth;
        let mode = crate::adapters::parse_merge_mode(&self.cfg.model.merge_mode).expect("resolved");
        // Width and depth range of this step, and which adapters are on.
        let mut cap: Option<usize> = None;
        let (ratio, compress, depths, trainable, frozen): (
            usize,
            Vec<usize>,
            Vec<usize>,
            Vec<String>,
            Vec<String>,
        ) = match &phase {
            Phase::Stage1 => {
                // Drawn only when caps are configured, so runs without them keep their
                // random stream.
                let caps = &self.cfg.space.passage_caps;
                if !caps.is_empty()
                    && rng.random_bool(self.cfg.space.passage_cap_probability.clamp(0.0, 1.0))
                {
                    cap = Some(caps[rng.random_range(0..caps.len())]);
                }
                // No ratios: a depth-only space, every step at full width; a capped
                // step also runs at full width.
                let full = self.cfg.space.ratios.is_empty()
                    || cap.is_some()
                    || rng.random_bool(self.cfg.space.full_width_probability.clamp(0.0, 1.0));
                let (r, c) = if full {
                    (1, vec![])
                } else {
                    let r = self.cfg.space.ratios[rng.random_range(0..self.cfg.space.ratios.len())];
                    let l = self.cfg.space.compress_layers
                        [rng.random_range(0..self.cfg.space.compress_layers.len())];
                    (r, vec![l])
                };
                (
                    r,
                    c,
                    (min_depth..=num_layers).collect(),
                    vec!["sd".into()],
                    vec![],
                )
            }
            Phase::Vertical => {
                let buckets = &self.cfg.stage2.depth_buckets;
                let (from, to) = buckets[self.step % buckets.len()];
                (
                    1,
                    vec![],
                    (from..=to).collect(),
                    vec![format!("v{from}-{to}")],
                    vec![],
                )
            }
            Phase::Horizontal(r) => {
                let buckets = &self.cfg.stage2.depth_buckets;
                let (from, to) = buckets[self.step % buckets.len()];
                let candidates: Vec<usize> = self
                    .cfg
                    .space
                    .compress_layers
                    .iter()
                    .copied()
                    .filter(|&l| l < to)
                    .collect();
                if candidates.is_empty() {
                    return Err(TrainerError::Input(format!(
                        "no compress layer below depth {to} for ratio {r}"
                    )));
                }
                let l = candidates[rng.random_range(0..candidates.len())];
                let depths: Vec<usize> = (from.max(l + 1)..=to).collect();
                (
                    *r,
                    vec![l],
                    depths,
                    vec![format!("h{r}")],
                    vec![format!("v{from}-{to}")],
                )
            }
        };
        let labels_allowed = match &phase {
            Phase::Stage1 => self.cfg.stage1.weight_labels > 0.0,
            _ => self.cfg.stage2.weight_labels > 0.0,
        };
        let (w_labels, w_teacher, w_sd) = match &phase {
            Phase::Stage1 => (
                self.cfg.stage1.weight_labels,
                self.cfg.stage1.weight_teacher,
                self.cfg.stage1.weight_self_distill,
            ),
            Phase::Vertical => (
                self.cfg.stage2.weight_labels,
                self.cfg.stage2.weight_teacher,
                0.0,
            ),
            Phase::Horizontal(_) => (
                self.cfg.stage2.weight_labels,
                self.cfg.stage2.weight_teacher,
                self.cfg.stage2.weight_self_distill,
            ),
        };
        let unlabeled_allowed = (w_teacher > 0.0 && !self.data.teacher.is_empty()) || w_sd > 0.0;
        let group = sample_group(
            &self.data,
            &self.cfg,
            &mut rng,
            labels_allowed,
            unlabeled_allowed,
        );
        // A capped step cuts the pairs it encoded once, as serving cuts a capped
        // configuration's pairs; the whole ones feed its super-structure below.
        let pairs = self.encode_group(&group)?;
        let capped: Option<Vec<models::EncodedPair>> =
            cap.map(|c| pairs.iter().map(|p| p.with_passage_cap(c)).collect());
        let input = self.model_input(capped.as_deref().unwrap_or(&pairs))?;
        let max_depth = *depths
            .iter()
            .max()
            .expect("a step scores at least one depth");
        self.attach(&trainable, &frozen);
        let sub = SubStructure {
            depth: max_depth,
            ratio,
            compress_layers: compress.clone(),
        };
        let out = forward(
            self.backbone.as_ref(),
            &self.heads,
            &input,
            &sub,
            mode,
            false,
        )?;
        // Full-width scores of the same adapters, detached: the super-structures. A
        // capped step's super-structure reads the whole passage (a second forward,
        // skipped when nothing would learn from it).
        let full_width: BTreeMap<usize, Tensor> = if w_sd > 0.0 && (ratio > 1 || cap.is_some()) {
            let whole;
            let full_input = match cap {
                Some(_) => {
                    whole = self.model_input(&pairs)?;
                    &whole
                }
                None => &input,
            };
            let full_sub = SubStructure {
                depth: num_layers.max(max_depth),
                ratio: 1,
                compress_layers: vec![],
            };
            let full_sub = if matches!(phase, Phase::Stage1) {
                full_sub
            } else {
                SubStructure {
                    depth: max_depth,
                    ..full_sub
                }
            };
            forward(
                self.backbone.as_ref(),
                &self.heads,
                full_input,
                &full_sub,
                mode,
                false,
            )?
            .scores
            .into_iter()
            .map(|(d, s)| Ok((d, s.detach())))
            .collect::<Result<_>>()?
        } else {
            out.scores.iter().map(|(d, s)| (*d, s.detach())).collect()
        };
        let teacher = match &group.teacher {
            Some(t) => Some(
                (Tensor::new(t.as_slice(), &self.device)? / self.cfg.data.teacher_temperature())?,
            ),
            None => None,
        };
        // Each depth's share of the loss: equal, except stage 1's full depth, which
        // `full_depth_weight` can weigh up. Shares sum to 1.
        let full_weight = match phase {
            Phase::Stage1 => self.cfg.stage1.full_depth_weight,
            _ => 1.0,
        };
        let depth_weight = |d: usize| if d == num_layers { full_weight } else { 1.0 };
        let weight_sum: f64 = depths.iter().map(|&d| depth_weight(d)).sum();
        let mut terms: BTreeMap<String, f64> = BTreeMap::new();
        let mut total: Option<Tensor> = None;
        let mut add = |name: &str,
                       t: Tensor,
                       w: f64,
                       d: usize,
                       terms: &mut BTreeMap<String, f64>|
         -> Result<()> {
            if w <= 0.0 {
                return Ok(());
            }
            let share = depth_weight(d) / weight_sum;
            let v: f32 = t.to_scalar()?;
            *terms.entry(name.to_string()).or_insert(0.0) += v as f64 * share;
            let weighted = (t * (w * share))?;
            total = Some(match total.take() {
                Some(acc) => (acc + weighted)?,
                None => weighted,
            });
            Ok(())
        };
        for &d in &depths {
            let Some(s) = out.scores.get(&d) else {
                continue;
            };
            if group.labeled {
                add("labels", ce_first(s)?, w_labels, d, &mut terms)?;
            }
            if let Some(t) = &teacher {
                add("teacher", soft_ce(s, t)?, w_teacher, d, &mut terms)?;
            }
            // Super-structure: merged steps learn from the same depth at full width (for
            // depths the merge reached), capped steps from the same depth on the whole
            // passage; every other depth learns from the next anchor above.
            let merged_here = (ratio > 1 && compress.iter().any(|&l| l < d)) || cap.is_some();
            let anchor = if merged_here {
                Some(d)
            } else {
                self.cfg
                    .space
                    .anchors
                    .iter()
                    .copied()
                    .filter(|&a| a > d)
                    .min()
            };
            if let Some(a) = anchor.filter(|_| w_sd > 0.0) {
                if let Some(target) = full_width.get(&a) {
                    add("self_distill", soft_ce(s, target)?, w_sd, d, &mut terms)?;
                }
            }
        }
        let Some(loss) = total else {
            return Err(TrainerError::Input(
                "this step has no loss term: check the loss weights and data".into(),
            ));
        };
        let loss_value: f32 = loss.to_scalar()?;
        if !loss_value.is_finite() {
            // Stop before the optimizer writes NaN into the adapters: the last checkpoint
            // stays good, and the log names the step.
            return Err(TrainerError::Input(format!(
                "phase {} step {}: the loss is {loss_value} (terms {terms:?}); lower the \
                 learning rates or check the data, then --resume from the last checkpoint",
                self.phases()[self.phase_index].0.name(),
                self.step
            )));
        }
        let grads = loss.backward()?;
        let warmup = self.cfg.stage1.warmup_steps.max(1) as f64;
        // Linear warm-up, then linear decay to 10% at the end of the phase.
        let progress = self.step as f64 / steps.max(1) as f64;
        let lr_scale = ((self.step + 1) as f64 / warmup).min(1.0) * (1.0 - 0.9 * progress);
        self.opt
            .as_mut()
            .expect("phase started")
            .step(&grads, lr_scale)?;
        Ok((loss_value as f64, terms))
    }

    /// Current trainable sets folded into `sets` (for saving), plus heads.
    pub fn adapters_snapshot(&self) -> Result<Adapters> {
        let mut sets = self.sets.clone();
        for (name, vars) in &self.lora_vars {
            let set = vars
                .iter()
                .map(|(k, (a, b))| Ok((k.clone(), (a.as_tensor().copy()?, b.as_tensor().copy()?))))
                .collect::<Result<LoraSet>>()?;
            sets.insert(name.clone(), set);
        }
        let mut heads = self.heads.clone();
        for (d, (w, b)) in &self.head_vars {
            heads.by_depth.insert(
                *d,
                Linear::new(w.as_tensor().copy()?, Some(b.as_tensor().copy()?)),
            );
        }
        if let Some(idf) = &mut heads.query_idf {
            for (d, p) in &self.idf_power_vars {
                idf.power.insert(*d, p.as_tensor().copy()?);
            }
        }
        Ok(Adapters {
            meta: self.meta.clone(),
            heads,
            sets,
        })
    }

    /// Runs every remaining phase, checkpointing and logging; calls `report` after each step.
    /// Returns `None` when `stop_after` interrupted the run (a checkpoint was written).
    pub fn run(&mut self, mut report: impl FnMut(&StepReport)) -> Result<Option<Adapters>> {
        let phases = self.phases();
        let mut ran = 0usize;
        while self.phase_index < phases.len() {
            let (phase, steps) = phases[self.phase_index].clone();
            if self.opt.is_none() {
                self.start_phase()?;
            }
            let started = Instant::now();
            let first = self.step;
            while self.step < steps {
                let (loss, terms) = self.train_step()?;
                self.step += 1;
                let pps = ((self.step - first) * self.cfg.data.group_size) as f64
                    / started.elapsed().as_secs_f64().max(1e-9);
                if let Some(log) = &mut self.log {
                    if self.step.is_multiple_of(self.cfg.run.log_every.max(1)) || self.step == steps
                    {
                        let line = serde_json::json!({"phase": phase.name(), "step": self.step, "loss": loss, "terms": terms, "pairs_per_second": pps});
                        let _ = writeln!(log, "{line}");
                    }
                }
                report(&StepReport {
                    phase: phase.name(),
                    step: self.step,
                    steps,
                    loss,
                    pairs_per_second: pps,
                });
                ran += 1;
                if self.stop_after.is_some_and(|n| ran >= n) && self.step < steps {
                    self.save_checkpoint()?;
                    return Ok(None);
                }
                if self
                    .step
                    .is_multiple_of(self.cfg.run.checkpoint_every.max(1))
                    && self.step < steps
                {
                    self.save_checkpoint()?;
                }
            }
            // Phase done: its sets become frozen; heads freeze after stage 1.
            let snapshot = self.adapters_snapshot()?;
            self.sets = snapshot.sets;
            self.heads = snapshot.heads;
            self.lora_vars.clear();
            if phase == Phase::Stage1 {
                self.head_vars.clear();
                self.idf_power_vars.clear();
            }
            self.opt = None;
            self.phase_index += 1;
            self.step = 0;
            self.save_checkpoint()?;
        }
        let adapters = self.adapters_snapshot()?;
        adapters.save(&self.out_dir.join("adapters.safetensors"))?;
        Ok(Some(adapters))
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.out_dir.join("checkpoint.safetensors")
    }

    /// Writes everything needed to continue: finished sets, heads, current vars and
    /// optimizer moments, phase and step.
    pub fn save_checkpoint(&self) -> Result<()> {
        let mut tensors = self.adapters_snapshot()?.tensors()?;
        let mut opt_step = 0;
        if let Some(opt) = &self.opt {
            opt_step = opt.step;
            for (k, (m, v)) in opt.moments.iter().enumerate() {
                tensors.push((format!("opt.{k}.m"), m.clone()));
                tensors.push((format!("opt.{k}.v"), v.clone()));
            }
        }
        let mut metadata = HashMap::new();
        metadata.insert(
            "mrank".into(),
            serde_json::to_string(&self.meta).expect("serializes"),
        );
        metadata.insert("phase_index".into(), self.phase_index.to_string());
        metadata.insert("step".into(), self.step.to_string());
        metadata.insert("opt_step".into(), opt_step.to_string());
        metadata.insert("sd_merged".into(), self.sd_merged.to_string());
        save_tensors(&tensors, Some(metadata), &self.checkpoint_path())
    }

    /// Restores a checkpoint written by `save_checkpoint`.
    pub fn resume(&mut self) -> Result<()> {
        let path = self.checkpoint_path();
        let bytes = std::fs::read(&path)
            .map_err(|e| TrainerError::Input(format!("{}: cannot resume: {e}", path.display())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| TrainerError::Input(format!("{}: {e}", path.display())))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let num = |k: &str| -> Result<usize> {
            meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                TrainerError::Input(format!("{}: checkpoint lacks {k}", path.display()))
            })
        };
        let tensors = candle_core::safetensors::load_buffer(&bytes, &self.device)?;
        self.phase_index = num("phase_index")?;
        self.step = num("step")?;
        let opt_step = num("opt_step")?;
        // Finished sets and heads.
        let adapters_only: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("opt."))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        let tmp = self.out_dir.join("resume-adapters.safetensors");
        let mut m = HashMap::new();
        m.insert(
            "mrank".to_string(),
            serde_json::to_string(&self.meta).expect("serializes"),
        );
        save_tensors(&adapters_only, Some(m), &tmp)?;
        let restored = Adapters::load(&tmp, &self.device)?;
        let _ = std::fs::remove_file(&tmp);
        let phases = self.phases();
        let in_stage1 =
            self.phase_index < phases.len() && phases[self.phase_index].0 == Phase::Stage1;
        for (d, h) in &restored.heads.by_depth {
            if let Some((w, b)) = self.head_vars.get(d) {
                w.set(&h.weight)?;
                b.set(h.bias.as_ref().expect("heads have a bias"))?;
            }
        }
        if let Some(idf) = &restored.heads.query_idf {
            for (d, p) in &idf.power {
                if let Some(var) = self.idf_power_vars.get(d) {
                    var.set(p)?;
                }
            }
            // The run goes on with the table it started with, even if the training data
            // changed on disk since.
            if let Some(current) = &mut self.heads.query_idf {
                current.log_idf = idf.log_idf.clone();
                current.merge_power = idf.merge_power;
            }
        }
        if !in_stage1 {
            self.head_vars.clear();
            self.idf_power_vars.clear();
            self.heads = restored.heads.clone();
        }
        let mut sets = restored.sets;
        self.sets.clear();
        if self.phase_index < phases.len() {
            let current = self.phase_sets(&phases[self.phase_index].0);
            // Finished sets first (stage 2 merges `sd` into the weights when it starts).
            self.sets = sets
                .iter()
                .filter(|(k, _)| !current.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if self.step > 0 || opt_step > 0 {
                self.start_phase()?;
                for name in &current {
                    let Some(saved) = sets.remove(name) else {
                        continue;
                    };
                    for (key, (a, b)) in saved {
                        if let Some((va, vb)) = self.lora_vars.get(name).and_then(|s| s.get(&key)) {
                            va.set(&a)?;
                            vb.set(&b)?;
                        }
                    }
                }
                let opt = self.opt.as_mut().expect("phase started");
                opt.step = opt_step;
                for (k, (m, v)) in opt.moments.iter_mut().enumerate() {
                    if let (Some(sm), Some(sv)) = (
                        tensors.get(&format!("opt.{k}.m")),
                        tensors.get(&format!("opt.{k}.v")),
                    ) {
                        *m = sm.clone();
                        *v = sv.clone();
                    }
                }
            }
        } else {
            self.sets = sets;
        }
        Ok(())
    }
}

/// Scores one query's candidates for the teacher term.
pub type TeacherScorer<'a> = dyn FnMut(&QueryCandidates) -> Result<Vec<f32>> + 'a;

/// Builds the scorer of a `model` teacher from its base checkpoint, its adapters file
/// and the max length, in place of the candle forward: the `mrank` binary passes one
/// that runs the teacher's full configuration through ONNX Runtime, several times
/// faster on CPU. Called only when the teacher cache misses.
pub type ModelTeacher = dyn Fn(&Path, &Path, usize) -> Result<Box<TeacherScorer<'static>>>;

/// The teacher's score of every (query, candidate) in the training data: `bi-encoder`
/// (pooled cosine) or `max-sim` (late interaction) of the base as it is, or the full
/// configuration of a trained model (`model`) on this base or on `data.teacher_base`
/// (a larger base distilled into this one). Cached in
/// `out_dir/teacher.safetensors`, whose header names the teacher, the max length and, for
/// a model, its adapters file (size and content hash) and the base it runs on
/// (fingerprint and layers); the cache is recomputed when any differs or a query is
/// missing.
#[allow(clippy::too_many_arguments)]
fn teacher_scores(
    section: &crate::config::DataSection,
    base: &Path,
    model: &dyn Backbone,
    encoder: &PairEncoder,
    data: &TrainData,
    max_length: usize,
    out_dir: &Path,
    device: &Device,
    model_teacher: Option<&ModelTeacher>,
) -> Result<HashMap<String, Vec<f32>>> {
    let kind = section.teacher;
    if kind == Teacher::None {
        return Ok(HashMap::new());
    }
    let mut header = HashMap::from([
        ("teacher".to_string(), kind.name().to_string()),
        ("max_length".to_string(), max_length.to_string()),
    ]);
    let teacher_file = match kind {
        Teacher::Model => {
            let (file, identity) = teacher_model_file(&section.teacher_model)?;
            header.insert("teacher_model".to_string(), identity);
            Some(file)
        }
        _ => None,
    };
    // A model teacher's scores depend on the base it runs on: its weights' fingerprint
    // and its layer count (a cut base shares the weights file) are part of what the
    // cache holds, whether the base is this run's or `data.teacher_base`.
    let teacher_base = match section.teacher_base.as_str() {
        "" => base.to_path_buf(),
        other => std::path::PathBuf::from(other),
    };
    let teacher_checkpoint = match kind {
        Teacher::Model => {
            let opened = Checkpoint::open(&teacher_base).and_then(|c| {
                let layers = c.config.dimensions().num_layers;
                let identity = format!("{} L{layers}", c.fingerprint()?);
                Ok((c, identity))
            });
            let (checkpoint, identity) = opened.map_err(|e| {
                TrainerError::Input(format!("teacher base {}: {e}", teacher_base.display()))
            })?;
            header.insert("teacher_base".to_string(), identity);
            Some(checkpoint)
        }
        _ => None,
    };
    let cache = out_dir.join("teacher.safetensors");
    let queries: Vec<&QueryCandidates> = data
        .labeled
        .iter()
        .map(|l| &l.query)
        .chain(data.unlabeled.iter())
        .collect();
    if let Some(tensors) = read_teacher_cache(&cache, &header, device) {
        // One score per candidate, or the cache was written for other candidate lists.
        let fits = |q: &QueryCandidates| {
            tensors
                .get(&q.qid)
                .and_then(|t| t.dims1().ok())
                .is_some_and(|n| n == q.candidates.len())
        };
        if queries.iter().all(|q| fits(q)) {
            return queries
                .iter()
                .map(|q| Ok((q.qid.clone(), tensors[&q.qid].to_vec1()?)))
                .collect();
        }
        eprintln!(
            "{}: the cached teacher scores miss some training queries or candidates; recomputing",
            cache.display()
        );
    }
    // Built only on a cache miss: a model teacher is a second model in memory.
    let mut score: Box<TeacherScorer<'_>> = match teacher_file {
        Some(file) => {
            let cannot_load = |e: TrainerError| {
                TrainerError::Input(format!(
                    "data.teacher_model {}: cannot load it on {}: {e}{}",
                    file.display(),
                    teacher_base.display(),
                    if section.teacher_base.is_empty() {
                        " (a teacher trained on another base needs data.teacher_base)"
                    } else {
                        ""
                    }
                ))
            };
            // Adapters that do not fit the teacher's base are refused here, with the
            // hint; a failure of the faster scorer itself falls back to candle.
            let checkpoint = teacher_checkpoint
                .as_ref()
                .expect("opened for a model teacher");
            Adapters::for_base(checkpoint, Some(&file), device).map_err(cannot_load)?;
            let faster = model_teacher.and_then(|build| {
                build(&teacher_base, &file, max_length)
                    .map_err(|e| {
                        eprintln!(
                            "teacher: {e}; scoring {} with the candle forward instead",
                            file.display()
                        )
                    })
                    .ok()
            });
            match faster {
                Some(scorer) => scorer,
                None => {
                    let mut teacher = crate::reranker::Reranker::load(
                        &teacher_base,
                        Some(&file),
                        max_length,
                        device,
                    )
                    .map_err(cannot_load)?;
                    let full = models::SubStructure::full(teacher.num_layers());
                    Box::new(move |q: &QueryCandidates| {
                        let texts: Vec<&str> =
                            q.candidates.iter().map(|c| c.text.as_str()).collect();
                        teacher.score(&q.query, &texts, &full, 8192)
                    })
                }
            }
        }
        None => {
            let score = match kind {
                Teacher::MaxSim => crate::biencoder::max_sim_scores,
                _ => crate::biencoder::cosine_scores,
            };
            Box::new(move |q: &QueryCandidates| {
                let texts: Vec<&str> = q.candidates.iter().map(|c| c.text.as_str()).collect();
                score(model, encoder, &q.query, &texts, max_length, device)
            })
        }
    };
    std::fs::create_dir_all(out_dir)
        .map_err(|e| TrainerError::Input(format!("{}: {e}", out_dir.display())))?;
    let started = Instant::now();
    let mut out = HashMap::new();
    for (i, q) in queries.iter().enumerate() {
        out.insert(q.qid.clone(), score(q)?);
        eprint!(
            "\rteacher ({}): query {}/{} · {:.0}s   ",
            kind.name(),
            i + 1,
            queries.len(),
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let tensors: Vec<(String, Tensor)> = out
        .iter()
        .map(|(k, v)| Ok((k.clone(), Tensor::new(v.as_slice(), device)?)))
        .collect::<Result<_>>()?;
    save_tensors(&tensors, Some(header), &cache)?;
    Ok(out)
}

/// The adapters file `data.teacher_model` names (a directory holding
/// `adapters.safetensors`, or the file) and what identifies its content for the cache
/// header: size and `models::content_hash` of the bytes.
fn teacher_model_file(named: &str) -> Result<(std::path::PathBuf, String)> {
    let path = Path::new(named);
    let file = if path.is_dir() {
        path.join("adapters.safetensors")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| {
        TrainerError::Input(format!(
            "data.teacher_model: cannot read {} ({e}); name a run directory of mrank train \
             or its adapters.safetensors",
            file.display()
        ))
    })?;
    let hash = models::content_hash(&bytes);
    Ok((file, format!("{} bytes, fnv1a {hash:016x}", bytes.len())))
}

/// The cached teacher scores when the cache was written by the same teacher at the same
/// max length; `None` when there is no usable cache, with a line saying why when one
/// exists. A cache without these header entries predates them and is not trusted: a
/// run with isolated segments wrote wrong bi-encoder scores then.
fn read_teacher_cache(
    cache: &Path,
    header: &HashMap<String, String>,
    device: &Device,
) -> Option<HashMap<String, Tensor>> {
    let bytes = std::fs::read(cache).ok()?;
    let written = safetensors::SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, h)| h.metadata().clone())
        .unwrap_or_default();
    for (key, want) in header {
        let had = written.get(key).map(String::as_str).unwrap_or("unrecorded");
        if had != want {
            eprintln!(
                "{}: cached teacher scores have {key} = {had}, this run wants {want}; recomputing",
                cache.display()
            );
            return None;
        }
    }
    match candle_core::safetensors::load_buffer(&bytes, device) {
        Ok(tensors) => Some(tensors),
        Err(e) => {
            eprintln!(
                "{}: unreadable teacher cache ({e}); recomputing",
                cache.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teacher_cache_is_used_only_for_the_teacher_and_length_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("teacher.safetensors");
        let device = Device::Cpu;
        let scores = vec![(
            "q1".to_string(),
            Tensor::new(&[0.5f32, 0.25], &device).unwrap(),
        )];
        let header = |teacher: &str, len: &str| {
            HashMap::from([
                ("teacher".to_string(), teacher.to_string()),
                ("max_length".to_string(), len.to_string()),
            ])
        };
        save_tensors(&scores, Some(header("max-sim", "256")), &cache).unwrap();
        let read = read_teacher_cache(&cache, &header("max-sim", "256"), &device).unwrap();
        assert_eq!(read["q1"].to_vec1::<f32>().unwrap(), vec![0.5, 0.25]);
        assert!(read_teacher_cache(&cache, &header("bi-encoder", "256"), &device).is_none());
        assert!(read_teacher_cache(&cache, &header("max-sim", "128"), &device).is_none());
        // Caches from before the header are recomputed; a missing cache is no error.
        save_tensors(&scores, None, &cache).unwrap();
        assert!(read_teacher_cache(&cache, &header("bi-encoder", "256"), &device).is_none());
        std::fs::remove_file(&cache).unwrap();
        assert!(read_teacher_cache(&cache, &header("bi-encoder", "256"), &device).is_none());
    }
}
