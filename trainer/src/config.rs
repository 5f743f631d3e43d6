//! The training configuration: one TOML file (every field has a default) plus
//! `--set section.key=value` overrides. The run directory keeps the exact config used.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainerError};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub lora: LoraSection,
    pub space: SpaceSection,
    pub stage1: Stage1Section,
    pub stage2: Stage2Section,
    pub run: RunSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Base checkpoint directory; empty = the embedded default base model.
    pub base: String,
    /// `span-product`, `max-sim`, `scoring-position` or `mean` (see `forward::Readout`).
    pub readout: String,
    /// `attention` (importance-weighted) or `uniform` merging.
    pub merge_mode: String,
    /// Tokens per (query, passage) pair.
    pub max_length: usize,
    /// Initial head weight for the span readouts (a cosine temperature of 1/scale).
    pub head_scale: f32,
    /// Query and passage attend only within their own segment, the passage behind its
    /// own `[CLS]` with positions from 0 (bert only; needs `merge_mode = "uniform"`,
    /// since `[CLS]` then pays no attention to the passage). See
    /// `Backbone::isolate_segments` and `PairEncoder::with_isolated_segments`.
    pub isolate_segments: bool,
    /// How max-sim weighs the query tokens: `uniform` or `idf` (see `QueryWeights`).
    pub query_weights: QueryWeights,
    /// β of `merge_mode = "idf"`: a passage token weighs idf(t)^β in its merge group.
    pub merge_idf_power: f32,
}

/// Where the teacher scores of the distillation term come from: the base model as it is
/// (`bi-encoder`, `max-sim`) or a re-ranker mrank trained earlier on the same base
/// (`model`, its full configuration; `data.teacher_model` names it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Teacher {
    /// The base's own mean-pooled cosine (the bi-encoder it was trained as).
    BiEncoder,
    /// The base's own late interaction over its last layer.
    MaxSim,
    /// The full configuration of a trained mrank model (its logits; the temperature
    /// defaults to 1, not the cosines' 0.05).
    Model,
    None,
}

impl Teacher {
    pub fn name(self) -> &'static str {
        match self {
            Teacher::BiEncoder => "bi-encoder",
            Teacher::MaxSim => "max-sim",
            Teacher::Model => "model",
            Teacher::None => "none",
        }
    }
}

/// How the max-sim readout weighs the query tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QueryWeights {
    /// Every query token counts the same.
    #[default]
    Uniform,
    /// Token t weighs idf(t)^α_d: idf from the training passages, an exponent per head
    /// (`idf::QueryIdf`).
    Idf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Labelled candidate files and their qrels (same order).
    pub train: Vec<String>,
    pub qrels: Vec<String>,
    /// Candidate files without judgments: only distillation terms apply.
    pub unlabeled: Vec<String>,
    /// Validation data evaluated at the end of the run (never trained on).
    pub dev: String,
    pub dev_qrels: String,
    /// Lowest grade that counts as a positive.
    pub positive_grade: u32,
    /// Pairs per group: one positive and `group_size - 1` negatives.
    pub group_size: usize,
    /// Share of steps drawn from the unlabeled files.
    pub unlabeled_fraction: f64,
    /// Teacher scores: `bi-encoder`, `max-sim`, `model` or `none` (see `Teacher`).
    pub teacher: Teacher,
    /// With `teacher = "model"`: the trained model, a directory holding
    /// `adapters.safetensors` (a run of `mrank train`, `adapters/minilm-l6`) or the file.
    pub teacher_model: String,
    /// With `teacher = "model"`: the base checkpoint the teacher was trained on, when it
    /// is not this run's (a student on a smaller or cut base distilling from a model
    /// trained on the full one). Empty: this run's base.
    pub teacher_base: String,
    /// Temperature applied to teacher scores. Unset, it is 0.05 for the base's
    /// teachers, which score cosines in [-1, 1], and 1 for a `model` teacher, which
    /// scores logits (already about 20 times a cosine); the written config records it.
    pub teacher_temperature: Option<f64>,
}

impl DataSection {
    /// `teacher_temperature`, or the default for this teacher when unset.
    pub fn teacher_temperature(&self) -> f64 {
        self.teacher_temperature.unwrap_or(match self.teacher {
            Teacher::Model => 1.0,
            _ => 0.05,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    pub rank: usize,
    pub alpha: f64,
    /// Projections that get LoRA: q, k, v, o, up, down, gate.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpaceSection {
    /// Shallowest depth with a head; 0 = a quarter of the layers, rounded up.
    pub min_depth: usize,
    pub ratios: Vec<usize>,
    /// Layers a training step may compress at (one per step, uniformly).
    pub compress_layers: Vec<usize>,
    /// Depths whose full-width scores teach the depths below them.
    pub anchors: Vec<usize>,
    /// Probability that a step keeps full width.
    pub full_width_probability: f64,
    /// Passage caps stage 1 also trains (`full-p32` reads a passage's first 32 tokens):
    /// a capped step encodes each passage cut to one of these, uniformly, at ratio 1,
    /// and through `stage1.weight_self_distill` every depth learns from the same depth's
    /// score of the whole passage (the capped configuration's super-structure), in place
    /// of the anchor above it. A capped step draws no width, so merged steps become
    /// rarer by the cap probability. Each cap must be below `model.max_length` (a cap
    /// the pair's room never reaches would train nothing). Empty: no capped steps, and
    /// the random stream of a run is the one it had before caps existed.
    pub passage_caps: Vec<usize>,
    /// Probability that a stage-1 step is a capped step (with `passage_caps`).
    pub passage_cap_probability: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Stage1Section {
    pub steps: usize,
    pub lr: f64,
    pub head_lr: f64,
    /// Learning rate of the heads' idf exponents (`model.query_weights = "idf"`): the
    /// best exponent of the untrained base ranges from about 0.5 (full depth) to 1.5
    /// (d2), a distance `head_lr` would not cover in a run.
    pub idf_power_lr: f64,
    pub warmup_steps: usize,
    pub weight_labels: f64,
    pub weight_teacher: f64,
    pub weight_self_distill: f64,
    /// Weight of the full depth's loss terms relative to each shallower exit's (1 = all
    /// depths equal). The stage-1 LoRA is shared by every depth, so with equal weights
    /// the shallow exits, four of five on a 6-layer base, outvote the full model.
    pub full_depth_weight: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Stage2Section {
    pub vertical_steps: usize,
    /// Steps per ratio for the horizontal adapters.
    pub horizontal_steps: usize,
    pub lr: f64,
    /// Vertical adapter buckets (inclusive depth ranges); empty = one for all depths.
    pub depth_buckets: Vec<(usize, usize)>,
    pub weight_labels: f64,
    pub weight_teacher: f64,
    /// Horizontal steps also distil from the same depth at full width.
    pub weight_self_distill: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    pub seed: u64,
    /// CPU threads for tensor math; 0 = all cores.
    pub threads: usize,
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// Sub-structures evaluated on the dev data at the end: `all`, `depths` or ids.
    pub eval_configs: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            base: String::new(),
            readout: "span-product".into(),
            merge_mode: "attention".into(),
            isolate_segments: false,
            query_weights: QueryWeights::Uniform,
            merge_idf_power: 1.0,
            max_length: 256,
            head_scale: 20.0,
        }
    }
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            train: vec![],
            qrels: vec![],
            unlabeled: vec![],
            dev: String::new(),
            dev_qrels: String::new(),
            positive_grade: 2,
            group_size: 16,
            unlabeled_fraction: 0.5,
            teacher: Teacher::BiEncoder,
            teacher_model: String::new(),
            teacher_base: String::new(),
            teacher_temperature: None,
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            rank: 16,
            alpha: 32.0,
            targets: ["q", "k", "v", "o", "up", "down", "gate"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Default for SpaceSection {
    fn default() -> Self {
        SpaceSection {
            min_depth: 0,
            ratios: vec![2, 4, 8],
            compress_layers: vec![],
            anchors: vec![],
            full_width_probability: 0.5,
            passage_caps: vec![],
            passage_cap_probability: 0.25,
        }
    }
}

impl Default for Stage1Section {
    fn default() -> Self {
        Stage1Section {
            steps: 300,
            lr: 2e-4,
            head_lr: 1e-3,
            idf_power_lr: 1e-2,
            warmup_steps: 20,
            full_depth_weight: 1.0,
            weight_labels: 1.0,
            weight_teacher: 1.0,
            weight_self_distill: 1.0,
        }
    }
}

impl Default for Stage2Section {
    fn default() -> Self {
        Stage2Section {
            vertical_steps: 100,
            horizontal_steps: 50,
            lr: 1e-4,
            depth_buckets: vec![],
            weight_labels: 1.0,
            weight_teacher: 1.0,
            weight_self_distill: 1.0,
        }
    }
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            seed: 0,
            threads: 0,
            checkpoint_every: 25,
            log_every: 1,
            eval_configs: "all".into(),
        }
    }
}

impl TrainConfig {
    /// Parses TOML text and applies `key.path=value` overrides (values in TOML syntax;
    /// bare words are taken as strings).
    pub fn from_toml(text: &str, overrides: &[String], origin: &str) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| TrainerError::Input(format!("{origin}: invalid TOML: {e}")))?;
        for o in overrides {
            let (path, raw) = o.split_once('=').ok_or_else(|| {
                TrainerError::Input(format!("--set {o}: expected section.key=value"))
            })?;
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .map(|mut t| t.remove("v").expect("key v was just written"))
                .unwrap_or_else(|_| toml::Value::String(raw.to_string()));
            let mut slot = &mut value;
            let keys: Vec<&str> = path.trim().split('.').collect();
            for (i, key) in keys.iter().enumerate() {
                let table = slot.as_table_mut().ok_or_else(|| {
                    TrainerError::Input(format!(
                        "--set {o}: {} is not a section",
                        keys[..i].join(".")
                    ))
                })?;
                if i + 1 == keys.len() {
                    table.insert(key.to_string(), parsed.clone());
                    break;
                }
                slot = table
                    .entry(key.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
            }
        }
        value
            .try_into()
            .map_err(|e| TrainerError::Input(format!("{origin}: {e}")))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serializes")
    }

    /// Resolves defaults that depend on the model and checks ranges; the message names
    /// the offending key.
    pub fn resolve(&mut self, num_layers: usize) -> Result<()> {
        let bad = |m: String| Err(TrainerError::Input(format!("training config: {m}")));
        if self.space.min_depth == 0 {
            self.space.min_depth = num_layers.div_ceil(4).max(1);
        }
        if self.space.min_depth > num_layers {
            return bad(format!(
                "space.min_depth {} exceeds the model's {num_layers} layers",
                self.space.min_depth
            ));
        }
        if self.space.compress_layers.is_empty() {
            self.space.compress_layers = (1..num_layers).collect();
        }
        if self.space.anchors.is_empty() {
            self.space.anchors = vec![num_layers];
        }
        for &a in &self.space.anchors {
            if a < self.space.min_depth || a > num_layers {
                return bad(format!(
                    "space.anchors: depth {a} is outside {}..={num_layers}",
                    self.space.min_depth
                ));
            }
        }
        for &l in &self.space.compress_layers {
            if l == 0 || l >= num_layers {
                return bad(format!(
                    "space.compress_layers: layer {l} is outside 1..{num_layers}"
                ));
            }
        }
        for &r in &self.space.ratios {
            if ![2, 4, 8].contains(&r) {
                return bad(format!("space.ratios: {r} is not one of 2, 4, 8"));
            }
        }
        if self.stage2.depth_buckets.is_empty() {
            self.stage2.depth_buckets = vec![(self.space.min_depth, num_layers)];
        }
        for &(from, to) in &self.stage2.depth_buckets {
            if from > to || from < self.space.min_depth || to > num_layers {
                return bad(format!(
                    "stage2.depth_buckets: [{from}, {to}] is outside {}..={num_layers}",
                    self.space.min_depth
                ));
            }
        }
        match (self.data.teacher, self.data.teacher_model.is_empty()) {
            (Teacher::Model, true) => {
                return bad(
                    "data.teacher = \"model\" needs data.teacher_model: a trained \
                            model's directory or its adapters.safetensors"
                        .into(),
                )
            }
            (Teacher::Model, false) | (_, true) => {}
            (other, false) => {
                return bad(format!(
                    "data.teacher_model is set but data.teacher is \"{}\"; set \
                     data.teacher = \"model\" to distil from it",
                    other.name()
                ))
            }
        }
        if !self.data.teacher_base.is_empty() && self.data.teacher != Teacher::Model {
            return bad(format!(
                "data.teacher_base is set but data.teacher is \"{}\"; it names the base of a \
                 `model` teacher",
                self.data.teacher.name()
            ));
        }
        let temperature = self.data.teacher_temperature();
        if !(temperature > 0.0 && temperature.is_finite()) {
            return bad(format!(
                "data.teacher_temperature {temperature}: must be a positive number"
            ));
        }
        self.data.teacher_temperature = Some(temperature);
        if self.data.group_size < 2 {
            return bad("data.group_size must be at least 2 (one positive, one negative)".into());
        }
        if !(self.stage1.full_depth_weight > 0.0 && self.stage1.full_depth_weight.is_finite()) {
            return bad(format!(
                "stage1.full_depth_weight {}: must be a positive number (1 weighs all depths \
                 equally)",
                self.stage1.full_depth_weight
            ));
        }
        if self.lora.rank == 0 {
            return bad("lora.rank must be positive".into());
        }
        // Numbers that NaN or a sign slip would turn into NaN adapters, or a panic when a
        // probability is drawn: each named with the range it must be in.
        let positive = [
            ("lora.alpha", self.lora.alpha),
            ("stage1.lr", self.stage1.lr),
            ("stage1.head_lr", self.stage1.head_lr),
            ("stage2.lr", self.stage2.lr),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{key} {v}: must be a positive number"));
            }
        }
        let non_negative = [
            ("stage1.idf_power_lr", self.stage1.idf_power_lr),
            ("stage1.weight_labels", self.stage1.weight_labels),
            ("stage1.weight_teacher", self.stage1.weight_teacher),
            (
                "stage1.weight_self_distill",
                self.stage1.weight_self_distill,
            ),
            ("stage2.weight_labels", self.stage2.weight_labels),
            ("stage2.weight_teacher", self.stage2.weight_teacher),
            (
                "stage2.weight_self_distill",
                self.stage2.weight_self_distill,
            ),
        ];
        for (key, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{key} {v}: must be a number ≥ 0"));
            }
        }
        let probabilities = [
            (
                "space.full_width_probability",
                self.space.full_width_probability,
            ),
            ("data.unlabeled_fraction", self.data.unlabeled_fraction),
            (
                "space.passage_cap_probability",
                self.space.passage_cap_probability,
            ),
        ];
        for (key, v) in probabilities {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{key} {v}: must be a probability, in 0..=1"));
            }
        }
        if !(self.model.head_scale.is_finite() && self.model.head_scale > 0.0) {
            return bad(format!(
                "model.head_scale {}: must be a positive number",
                self.model.head_scale
            ));
        }
        if self.space.passage_caps.contains(&0) {
            return bad(format!(
                "space.passage_caps {:?}: a cap must keep at least one passage token",
                self.space.passage_caps
            ));
        }
        if let Some(cap) = self
            .space
            .passage_caps
            .iter()
            .find(|&&c| c >= self.model.max_length)
        {
            return bad(format!(
                "space.passage_caps: {cap} is not below model.max_length {}, so it would cut \
                 no passage; list caps shorter than the passages",
                self.model.max_length
            ));
        }
        const PROJECTIONS: [&str; 7] = ["q", "k", "v", "o", "up", "down", "gate"];
        if self.lora.targets.is_empty() {
            return bad(format!(
                "lora.targets is empty; list projections of {PROJECTIONS:?}"
            ));
        }
        if let Some(t) = self
            .lora
            .targets
            .iter()
            .find(|t| !PROJECTIONS.contains(&t.as_str()))
        {
            return bad(format!(
                "lora.targets: {t:?} is not a projection name; use {PROJECTIONS:?}"
            ));
        }
        let mut ratios = self.space.ratios.clone();
        ratios.sort_unstable();
        if ratios.windows(2).any(|w| w[0] == w[1]) {
            return bad(format!(
                "space.ratios {:?} lists a ratio twice (each gets one horizontal adapter)",
                self.space.ratios
            ));
        }
        if crate::forward::Readout::parse(&self.model.readout).is_none() {
            return bad(format!(
                "model.readout {:?}: use span-product, max-sim, scoring-position or mean",
                self.model.readout
            ));
        }
        if crate::adapters::parse_merge_mode(&self.model.merge_mode).is_none() {
            return bad(format!(
                "model.merge_mode {:?}: use attention, uniform or idf",
                self.model.merge_mode
            ));
        }
        if self.model.isolate_segments && self.model.merge_mode == "attention" {
            return bad(
                "model.isolate_segments needs model.merge_mode = \"uniform\" or \"idf\": \
                 with isolated segments the scoring position pays no attention to the passage"
                    .into(),
            );
        }
        if self.model.merge_mode == "idf" && self.model.query_weights != QueryWeights::Idf {
            return bad(
                "model.merge_mode = \"idf\" uses the idf table of model.query_weights = \
                 \"idf\"; set both"
                    .into(),
            );
        }
        if !(self.model.merge_idf_power.is_finite() && self.model.merge_idf_power >= 0.0) {
            return bad(format!(
                "model.merge_idf_power {}: must be a number ≥ 0 (0 merges uniformly)",
                self.model.merge_idf_power
            ));
        }
        if self.model.isolate_segments
            && !crate::forward::Readout::parse(&self.model.readout).is_some_and(|r| r.reads_spans())
        {
            return bad(format!(
                "model.isolate_segments needs a span readout (span-product or max-sim), not \
                 {:?}: an isolated passage is invisible from the query's scoring position",
                self.model.readout
            ));
        }
        if self.model.query_weights == QueryWeights::Idf && self.model.readout != "max-sim" {
            return bad(format!(
                "model.query_weights = \"idf\" weighs the query tokens of max-sim; it needs \
                 model.readout = \"max-sim\", not {:?}",
                self.model.readout
            ));
        }
        Ok(())
    }
}
