//! Training on tiny fixtures: the loss goes down (bert and llama), only adapters and
//! heads get gradients, checkpoints round-trip exactly, and `--resume` reproduces an
//! uninterrupted run.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use common::{fixture, max_abs_diff};
use trainer::adapters::Adapters;
use trainer::config::TrainConfig;
use trainer::linear::LoraBranch;
use trainer::train::{load_data, Trainer};
use trainer::{forward, load_backbone, Heads, MergeMode, ModelInput};

/// One labelled query with one positive and three negatives, written with words the
/// tiny fixtures' word-level vocabularies know.
fn write_data(dir: &Path) -> (String, String) {
    let data = dir.join("train.jsonl");
    let line = serde_json::json!({
        "qid": "q1",
        "query": "predict whether passage contains an answer",
        "candidates": [
            {"docid": "pos", "text": "the passage contains an answer to query"},
            {"docid": "n1", "text": "tok40 tok41 tok42 tok43 tok44"},
            {"docid": "n2", "text": "tok50 tok51 tok52 tok53 tok54 tok55"},
            {"docid": "n3", "text": "tok60 tok61 tok62"}
        ]
    });
    std::fs::write(&data, format!("{line}\n")).unwrap();
    let qrels = dir.join("qrels.txt");
    std::fs::write(&qrels, "q1 Q0 pos 3\nq1 Q0 n1 0\n").unwrap();
    (data.display().to_string(), qrels.display().to_string())
}

fn tiny_config(dir: &Path, extra: &[&str]) -> TrainConfig {
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml(&tiny_toml(dir), &overrides, "test").unwrap()
}

fn tiny_toml(dir: &Path) -> String {
    let (data, qrels) = write_data(dir);
    format!(
        r#"
[model]
readout = "scoring-position"
max_length = 48
[data]
train = ["{data}"]
qrels = ["{qrels}"]
group_size = 4
teacher = "none"
[lora]
rank = 4
alpha = 8.0
[space]
min_depth = 1
ratios = [2]
compress_layers = [1]
[stage1]
steps = 20
lr = 1e-2
head_lr = 5e-2
warmup_steps = 1
[stage2]
vertical_steps = 0
horizontal_steps = 0
[run]
checkpoint_every = 1000
"#
    )
}

fn losses(name: &str, extra: &[&str]) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let mut overrides = vec!["space.full_width_probability=1.0"];
    overrides.extend_from_slice(extra);
    let cfg = tiny_config(dir.path(), &overrides);
    let (data, _) = load_data(&cfg).unwrap();
    let mut trainer = Trainer::new(
        cfg,
        &fixture(name),
        &dir.path().join("out"),
        data,
        &Device::Cpu,
    )
    .unwrap();
    let mut out = Vec::new();
    trainer
        .run(|r| out.push(r.loss))
        .unwrap()
        .expect("finished");
    out
}

#[test]
fn loss_decreases_on_tiny_bert() {
    let l = losses("tiny-bert", &[]);
    assert!(
        l.last().unwrap() < &(l[0] * 0.5),
        "loss did not fall: {l:?}"
    );
}

#[test]
fn loss_decreases_on_tiny_llama() {
    let l = losses("tiny-llama", &[]);
    assert!(
        l.last().unwrap() < &(l[0] * 0.5),
        "loss did not fall: {l:?}"
    );
}

/// The embedded default's recipe: late-interaction readout, isolated segments, the
/// full depth weighed up.
#[test]
fn loss_decreases_with_max_sim_on_isolated_segments() {
    let l = losses(
        "tiny-bert",
        &[
            "model.readout=max-sim",
            "model.isolate_segments=true",
            "model.merge_mode=uniform",
            "stage1.full_depth_weight=2.0",
        ],
    );
    assert!(
        l.last().unwrap() < &(l[0] * 0.5),
        "loss did not fall: {l:?}"
    );
}

/// A depth-only space (`space.ratios = []`): stage 1 samples no width, no horizontal
/// phase exists, and training still learns. It used to panic on the empty ratio list.
#[test]
fn depth_only_space_trains() {
    let extra = [
        "space.ratios=[]",
        "stage2.vertical_steps=2",
        "stage2.horizontal_steps=2",
    ];
    let dir = tempfile::tempdir().unwrap();
    let phases: Vec<String> = trainer::train::phases(&tiny_config(dir.path(), &extra))
        .iter()
        .map(|(p, _)| p.name())
        .collect();
    assert_eq!(phases, ["stage1", "vertical"]);
    // Width sampling on every step it could happen: still none, since there is no ratio.
    let l = losses(
        "tiny-bert",
        &[&extra[..], &["space.full_width_probability=0.0"]].concat(),
    );
    assert_eq!(l.len(), 22);
    assert!(l[19] < l[0] * 0.5, "loss did not fall: {l:?}");
}

/// Passage caps (`space.passage_caps`): a capped step reads each passage's first N tokens,
/// and every depth, full depth included, learns from its own score of the whole passage.
/// Scoring full depth alone (tiny-bert has 3 layers) on the first step of a run, with
/// the max-sim readout (a fresh head would score every passage alike):
/// - uncapped steps have no super-structure, so no self-distillation term;
/// - a cap of 40 never binds on the fixture's short passages: the student is its own
///   target, and the term is the target's entropy;
/// - a cap of 2 changes the student (its label loss differs) but not the target, so the
///   term grows by KL(whole passage ‖ capped).
#[test]
fn capped_steps_learn_from_the_whole_passage() {
    let first_step = |extra: &[&str]| -> std::collections::BTreeMap<String, f64> {
        let dir = tempfile::tempdir().unwrap();
        let mut overrides = vec![
            "space.full_width_probability=1.0",
            "space.min_depth=3",
            "stage1.steps=1",
            "model.readout=max-sim",
            "model.isolate_segments=true",
            "model.merge_mode=uniform",
        ];
        overrides.extend_from_slice(extra);
        let cfg = tiny_config(dir.path(), &overrides);
        let (data, _) = load_data(&cfg).unwrap();
        let out = dir.path().join("out");
        let mut trainer =
            Trainer::new(cfg, &fixture("tiny-bert"), &out, data, &Device::Cpu).unwrap();
        trainer.run(|_| {}).unwrap().expect("finished");
        drop(trainer);
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        serde_json::from_value(v["terms"].clone()).unwrap()
    };
    let plain = first_step(&[]);
    assert!(!plain.contains_key("self_distill"), "{plain:?}");
    let unbound = first_step(&[
        "space.passage_caps=[40]",
        "space.passage_cap_probability=1.0",
    ]);
    let capped = first_step(&[
        "space.passage_caps=[2]",
        "space.passage_cap_probability=1.0",
    ]);
    assert!(
        (unbound["labels"] - plain["labels"]).abs() < 1e-6,
        "a cap that cuts nothing changed the student: {unbound:?} vs {plain:?}"
    );
    assert!(
        (capped["labels"] - plain["labels"]).abs() > 1e-6,
        "the cap was not applied: {capped:?} vs {plain:?}"
    );
    let kl = capped["self_distill"] - unbound["self_distill"];
    assert!(
        kl > 1e-6,
        "the capped student was not taught by the whole passage: {capped:?} vs {unbound:?}"
    );
}

/// The cap draw happens only when caps are listed, so a config without them trains
/// exactly as before caps existed; listing one changes the run.
#[test]
fn passage_caps_leave_other_runs_unchanged() {
    let base = ["space.full_width_probability=0.5"];
    let before = losses("tiny-bert", &base);
    let unused = losses(
        "tiny-bert",
        &[&base[..], &["space.passage_cap_probability=0.9"]].concat(),
    );
    assert_eq!(before, unused);
    let capped = losses(
        "tiny-bert",
        &[
            &base[..],
            &[
                "space.passage_caps=[2]",
                "space.passage_cap_probability=0.5",
            ],
        ]
        .concat(),
    );
    assert_ne!(before, capped);
    let dir = tempfile::tempdir().unwrap();
    for (caps, named) in [("[0]", "at least one"), ("[48]", "model.max_length 48")] {
        let err = TrainConfig::from_toml(
            &tiny_toml(dir.path()),
            &[format!("space.passage_caps={caps}")],
            "test",
        )
        .and_then(|mut c| c.resolve(2))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("space.passage_caps") && err.contains(named),
            "{err}"
        );
    }
}

#[test]
fn inconsistent_model_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_toml(dir.path());
    let refused = |overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::from_toml(&text, &o, "test")
            .and_then(|mut cfg| cfg.resolve(3))
            .expect_err("refused")
            .to_string()
    };
    let e = refused(&["model.isolate_segments=true", "model.merge_mode=uniform"]);
    assert!(e.contains("needs a span readout"), "{e}");
    let e = refused(&["stage1.full_depth_weight=0"]);
    assert!(e.contains("stage1.full_depth_weight"), "{e}");
    let e = refused(&["model.readout=max-similarity"]);
    assert!(e.contains("max-sim"), "{e}");
    let e = refused(&["model.query_weights=idf"]);
    assert!(e.contains("needs model.readout = \"max-sim\""), "{e}");
    let e = refused(&["model.readout=max-sim", "model.query_weights=bm25"]);
    assert!(
        e.contains("bm25") && e.contains("uniform") && e.contains("idf"),
        "{e}"
    );
    let e = refused(&["model.readout=max-sim", "model.merge_mode=idf"]);
    assert!(e.contains("set both"), "{e}");
    let e = refused(&["data.teacher=cross-encoder"]);
    assert!(
        e.contains("cross-encoder") && e.contains("bi-encoder"),
        "{e}"
    );
    let e = refused(&["data.teacher=model"]);
    assert!(e.contains("needs data.teacher_model"), "{e}");
    let e = refused(&["data.teacher=bi-encoder", "data.teacher_model=runs/x"]);
    assert!(e.contains("data.teacher = \"model\""), "{e}");
    let e = refused(&["data.teacher=bi-encoder", "data.teacher_base=x"]);
    assert!(e.contains("data.teacher_base"), "{e}");
    let e = refused(&["data.teacher_temperature=0"]);
    assert!(e.contains("data.teacher_temperature"), "{e}");
    // Numbers that would train NaN adapters or panic when a probability is drawn.
    let e = refused(&["stage1.lr=nan"]);
    assert!(e.contains("stage1.lr") && e.contains("positive"), "{e}");
    let e = refused(&["stage2.lr=-1e-4"]);
    assert!(e.contains("stage2.lr"), "{e}");
    let e = refused(&["stage1.weight_teacher=-1"]);
    assert!(e.contains("stage1.weight_teacher"), "{e}");
    let e = refused(&["space.full_width_probability=nan"]);
    assert!(e.contains("space.full_width_probability"), "{e}");
    let e = refused(&["data.unlabeled_fraction=1.5"]);
    assert!(e.contains("data.unlabeled_fraction"), "{e}");
    // Lists that would train nothing, or one adapter twice.
    let e = refused(&["lora.targets=[\"query\", \"value\"]"]);
    assert!(e.contains("\"query\" is not a projection name"), "{e}");
    let e = refused(&["space.ratios=[2, 2]"]);
    assert!(e.contains("twice"), "{e}");
}

/// The temperature defaults per teacher (cosines 0.05, a model's logits 1), and the
/// resolved value is what the written config records.
#[test]
fn teacher_temperature_defaults_per_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let resolved = |overrides: &[&str]| {
        let mut cfg = tiny_config(dir.path(), overrides);
        cfg.resolve(3).unwrap();
        cfg.data.teacher_temperature
    };
    assert_eq!(resolved(&["data.teacher=bi-encoder"]), Some(0.05));
    assert_eq!(
        resolved(&["data.teacher=model", "data.teacher_model=x"]),
        Some(1.0)
    );
    assert_eq!(
        resolved(&[
            "data.teacher=model",
            "data.teacher_model=x",
            "data.teacher_temperature=0.5"
        ]),
        Some(0.5)
    );
}

/// A teacher cache written for other candidate lists is recomputed, not indexed out of
/// range (or, with more candidates than now, matched to the wrong passages).
#[test]
fn a_teacher_cache_for_other_candidates_is_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cached_len = || {
        let cfg = tiny_config(dir.path(), &["data.teacher=bi-encoder"]);
        let (data, _) = load_data(&cfg).unwrap();
        Trainer::new(cfg, &fixture("tiny-bert"), &out, data, &Device::Cpu).unwrap();
        common::load(&out.join("teacher.safetensors"))["q1"]
            .dims1()
            .unwrap()
    };
    assert_eq!(cached_len(), 4);
    // The same query with a fifth candidate: `tiny_config` rewrites the data each time,
    // so add it through a config pointing at an edited copy.
    let edited = dir.path().join("edited.jsonl");
    let text = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
    let mut line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    line["candidates"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"docid": "n4", "text": "tok70 tok71"}));
    std::fs::write(&edited, format!("{line}\n")).unwrap();
    let train = format!("data.train=[\"{}\"]", edited.display());
    let cfg = tiny_config(dir.path(), &["data.teacher=bi-encoder", &train]);
    let (data, _) = load_data(&cfg).unwrap();
    Trainer::new(cfg, &fixture("tiny-bert"), &out, data, &Device::Cpu).unwrap();
    let scores = common::load(&out.join("teacher.safetensors"))["q1"]
        .dims1()
        .unwrap();
    assert_eq!(scores, 5);
}

/// `data.teacher = "model"`: the teacher scores are the trained model's full
/// configuration, as `Reranker` scores it, and the cache names the model it came from.
#[test]
fn a_trained_model_is_a_teacher() {
    let dir = tempfile::tempdir().unwrap();
    // The teacher: a short run on the tiny fixture.
    let cfg = tiny_config(dir.path(), &["stage1.steps=5"]);
    let (data, _) = load_data(&cfg).unwrap();
    let teacher_dir = dir.path().join("teacher");
    Trainer::new(cfg, &fixture("tiny-bert"), &teacher_dir, data, &Device::Cpu)
        .unwrap()
        .run(|_| {})
        .unwrap()
        .unwrap();
    let teacher_model = format!("data.teacher_model={}", teacher_dir.display());
    let student = |out: &str| {
        let cfg = tiny_config(
            dir.path(),
            &[
                "data.teacher=model",
                &teacher_model,
                "data.teacher_temperature=1",
            ],
        );
        let (data, _) = load_data(&cfg).unwrap();
        let out = dir.path().join(out);
        Trainer::new(cfg, &fixture("tiny-bert"), &out, data, &Device::Cpu).unwrap();
        out.join("teacher.safetensors")
    };
    let cache = student("student");
    let scores = common::load(&cache)["q1"].to_vec1::<f32>().unwrap();

    let mut teacher = trainer::reranker::Reranker::load(
        &fixture("tiny-bert"),
        Some(&teacher_dir.join("adapters.safetensors")),
        48,
        &Device::Cpu,
    )
    .unwrap();
    let queries = trainer::data::read_candidates(&dir.path().join("train.jsonl")).unwrap();
    let q = &queries[0];
    let pairs: Vec<_> = q
        .candidates
        .iter()
        .map(|c| teacher.encoder.encode(&q.query, &c.text, None).unwrap())
        .collect();
    let full = models::SubStructure::full(teacher.num_layers());
    let want = teacher.score_pairs(&pairs, &full, 8192).unwrap();
    assert_eq!(scores.len(), want.len());
    for (a, b) in scores.iter().zip(&want) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{scores:?} vs {want:?}"
        );
    }
    // The untrained base scores differently: the adapters were applied.
    let mut base =
        trainer::reranker::Reranker::load(&fixture("tiny-bert"), None, 48, &Device::Cpu).unwrap();
    assert_ne!(base.score_pairs(&pairs, &full, 8192).unwrap(), want);

    let bytes = std::fs::read(&cache).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = header.metadata().clone().unwrap();
    assert_eq!(header["teacher"], "model");
    assert!(header["teacher_model"].contains("fnv1a"), "{header:?}");

    // A teacher directory without adapters: the error names the file.
    let cfg = tiny_config(
        dir.path(),
        &["data.teacher=model", "data.teacher_model=/nonexistent/run"],
    );
    let (data, _) = load_data(&cfg).unwrap();
    let e = Trainer::new(
        cfg,
        &fixture("tiny-bert"),
        &dir.path().join("x"),
        data,
        &Device::Cpu,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("/nonexistent/run"), "{e}");

    // A student on a smaller base (tiny-bert cut to 2 layers) distils from the teacher
    // on the teacher's own base: the same scores, and the cache names that base.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-bert").join(file), cut.join(file)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-bert").join("config.json")).unwrap(),
    )
    .unwrap();
    config["num_hidden_layers"] = 2.into();
    std::fs::write(cut.join("config.json"), config.to_string()).unwrap();
    let on_cut = |out: &str, extra: &[&str]| {
        let cfg = tiny_config(
            dir.path(),
            &[&["data.teacher=model", &teacher_model][..], extra].concat(),
        );
        let (data, _) = load_data(&cfg).unwrap();
        Trainer::new(cfg, &cut, &dir.path().join(out), data, &Device::Cpu)
    };
    let e = on_cut("cut-alone", &[]).err().expect("refused").to_string();
    assert!(e.contains("data.teacher_base"), "{e}");
    let teacher_base = format!("data.teacher_base={}", fixture("tiny-bert").display());
    on_cut("cut-student", &[&teacher_base]).unwrap();
    let cache = dir.path().join("cut-student/teacher.safetensors");
    assert_eq!(
        common::load(&cache)["q1"].to_vec1::<f32>().unwrap(),
        scores,
        "the teacher on its own base scores as it does for a student on that base"
    );
    let bytes = std::fs::read(&cache).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(header
        .metadata()
        .as_ref()
        .unwrap()
        .contains_key("teacher_base"));
    // That cache was scored on the full base: a run on the cut base without
    // teacher_base must not take it (the teacher does not fit there, and says why).
    let e = on_cut("cut-student", &[])
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("data.teacher_base"), "{e}");
}

/// Idf-weighted max-sim with idf merging: the exponents are trained with the heads (they
/// leave their start), the table and β survive the adapters file, and a resumed run ends
/// where an uninterrupted one does.
#[test]
fn idf_query_weights_train_save_and_resume() {
    let extra = [
        "model.readout=max-sim",
        "model.isolate_segments=true",
        "model.merge_mode=uniform",
        "model.query_weights=idf",
        "model.merge_mode=idf",
        "model.merge_idf_power=2.0",
        "space.full_width_probability=0.5",
        "stage1.steps=6",
        "stage2.vertical_steps=2",
        "stage2.horizontal_steps=2",
    ];
    let run = |stop: Option<usize>, dir: &Path| train_resuming("tiny-bert", &extra, stop, dir);
    let a = tempfile::tempdir().unwrap();
    let trained = run(None, a.path());
    assert_eq!(
        trained.meta.query_weights,
        trainer::config::QueryWeights::Idf
    );
    assert_eq!(trained.meta.merge_mode, "idf");
    let idf = trained.heads.query_idf.as_ref().expect("idf weights");
    assert_eq!(
        idf.power.keys().collect::<Vec<_>>(),
        trained.heads.by_depth.keys().collect::<Vec<_>>()
    );
    for (d, p) in &idf.power {
        let p: Vec<f32> = p.to_vec1().unwrap();
        assert!(
            (p[0] - trainer::idf::INITIAL_POWER).abs() > 1e-4,
            "depth {d}'s exponent did not train: {p:?}"
        );
    }
    let loaded = Adapters::load(&a.path().join("out/adapters.safetensors"), &Device::Cpu).unwrap();
    assert_same(&trained, &loaded, 0.0);
    let b = tempfile::tempdir().unwrap();
    assert_same(&trained, &run(Some(4), b.path()), 1e-6);
}

#[test]
fn only_adapters_and_heads_receive_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let f = common::tiny("tiny-bert");
    let mut backbone = load_backbone(&f.checkpoint, &Device::Cpu).unwrap();
    let mut vars: Vec<Var> = Vec::new();
    let mut base_weights: Vec<Tensor> = Vec::new();
    for (_, _, linear) in backbone.projections_mut() {
        let a = Var::from_tensor(
            &Tensor::randn(0f32, 0.1, (2, linear.in_dim()), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let b = Var::from_tensor(
            &Tensor::randn(0f32, 0.1, (linear.out_dim(), 2), &Device::Cpu).unwrap(),
        )
        .unwrap();
        linear.lora = vec![LoraBranch {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 1.0,
        }];
        base_weights.push(linear.weight.clone());
        vars.extend([a, b]);
    }
    let mut heads = Heads::zeros(1, 3, 64, &Device::Cpu).unwrap();
    for head in heads.by_depth.values_mut() {
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 64), &Device::Cpu).unwrap()).unwrap();
        head.weight = w.as_tensor().clone();
        vars.push(w);
    }
    let sub = models::SubStructure {
        depth: 3,
        ratio: 2,
        compress_layers: vec![1],
    };
    let input: &ModelInput = &f.input;
    let out = forward(
        backbone.as_ref(),
        &heads,
        input,
        &sub,
        MergeMode::Attention,
        false,
    )
    .unwrap();
    let loss = out
        .scores
        .values()
        .map(|s| s.sqr().unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    for v in &vars {
        let g = grads
            .get(v.as_tensor())
            .expect("every adapter and head gets a gradient");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
    // Base weights are constants: never variables, so no optimizer can touch them, and
    // an update step over every variable leaves them bit-for-bit unchanged.
    let before: Vec<Vec<f32>> = base_weights
        .iter()
        .map(|w| w.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert!(base_weights.iter().all(|w| !w.is_variable()));
    let mut opt = trainer::optim::AdamW::new(vec![trainer::optim::ParamGroup {
        vars: vars.clone(),
        lr: 0.1,
    }])
    .unwrap();
    opt.step(&grads, 1.0).unwrap();
    for (w, b) in base_weights.iter().zip(&before) {
        assert_eq!(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b);
    }
    drop(dir);
}

fn assert_same(a: &Adapters, b: &Adapters, tol: f32) {
    assert_eq!(a.heads.by_depth.len(), b.heads.by_depth.len());
    for (d, h) in &a.heads.by_depth {
        let other = &b.heads.by_depth[d];
        let diff = max_abs_diff(&h.weight, &other.weight);
        assert!(diff <= tol, "head {d} differs by {diff}");
    }
    match (&a.heads.query_idf, &b.heads.query_idf) {
        (None, None) => {}
        (Some(x), Some(y)) => {
            assert_eq!(
                max_abs_diff(&x.log_idf, &y.log_idf),
                0.0,
                "idf tables differ"
            );
            assert_eq!(x.merge_power, y.merge_power);
            assert_eq!(x.power.len(), y.power.len());
            for (d, p) in &x.power {
                let diff = max_abs_diff(p, &y.power[d]);
                assert!(diff <= tol, "idf exponent of depth {d} differs by {diff}");
            }
        }
        _ => panic!("one file has idf query weights, the other not"),
    }
    assert_eq!(
        a.sets.keys().collect::<Vec<_>>(),
        b.sets.keys().collect::<Vec<_>>()
    );
    for (name, set) in &a.sets {
        for (key, (x, y)) in set {
            let (u, v) = &b.sets[name][key];
            for (p, q) in [(x, u), (y, v)] {
                let diff = max_abs_diff(p, q);
                assert!(diff <= tol, "{name} {key:?} differs by {diff}");
            }
        }
    }
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), &["stage1.steps=3"]);
    let (data, _) = load_data(&cfg).unwrap();
    let mut trainer = Trainer::new(
        cfg,
        &fixture("tiny-bert"),
        &dir.path().join("out"),
        data,
        &Device::Cpu,
    )
    .unwrap();
    let trained = trainer.run(|_| {}).unwrap().unwrap();
    let path = dir.path().join("out/adapters.safetensors");
    let loaded = Adapters::load(&path, &Device::Cpu).unwrap();
    assert_same(&trained, &loaded, 0.0);
    assert_eq!(trained.meta, loaded.meta);
}

/// Trains fixture `name` in `dir`; with `stop`, the run stops after that many steps and
/// a fresh trainer (as a new process would) resumes it from the checkpoint.
fn train_resuming(name: &str, extra: &[&str], stop: Option<usize>, dir: &Path) -> Adapters {
    let cfg = tiny_config(dir, extra);
    let (data, _) = load_data(&cfg).unwrap();
    let out = dir.join("out");
    let mut trainer = Trainer::new(cfg.clone(), &fixture(name), &out, data, &Device::Cpu).unwrap();
    trainer.stop_after = stop;
    match trainer.run(|_| {}).unwrap() {
        Some(a) => a,
        None => {
            let (data, _) = load_data(&cfg).unwrap();
            let mut resumed = Trainer::new(cfg, &fixture(name), &out, data, &Device::Cpu).unwrap();
            resumed.resume().unwrap();
            resumed.run(|_| {}).unwrap().unwrap()
        }
    }
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let extra = [
        "stage1.steps=6",
        "stage2.vertical_steps=3",
        "stage2.horizontal_steps=3",
        "space.full_width_probability=0.5",
    ];
    let run = |stop: Option<usize>, dir: &Path| train_resuming("tiny-llama", &extra, stop, dir);
    let a = tempfile::tempdir().unwrap();
    let uninterrupted = run(None, a.path());
    // Interrupt inside stage 1, and inside stage 2's vertical phase.
    for stop in [4, 8] {
        let b = tempfile::tempdir().unwrap();
        let resumed = run(Some(stop), b.path());
        assert_same(&uninterrupted, &resumed, 1e-6);
    }
}

#[test]
fn a_config_with_a_depth_the_model_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), &["space.anchors=[7]"]);
    let (data, _) = load_data(&cfg).unwrap();
    let err = Trainer::new(
        cfg,
        &fixture("tiny-bert"),
        &dir.path().join("out"),
        data,
        &Device::Cpu,
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("space.anchors: depth 7"), "{err}");
}

#[test]
fn judged_queries_missing_from_the_data_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), &[]);
    std::fs::write(&cfg.data.qrels[0], "q1 Q0 pos 3\nq9 Q0 x 1\nq8 Q0 y 2\n").unwrap();
    let (_, notes) = load_data(&cfg).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("2 judged queries are not in")),
        "{notes:?}"
    );
}

/// The training path (differentiable primitives, taken when a LoRA variable is
/// upstream) and the inference path (candle's fused norms and softmax) agree.
#[test]
fn training_and_inference_paths_agree() {
    for name in ["tiny-bert", "tiny-llama", "tiny-gemma2"] {
        let f = common::tiny(name);
        let layers = f.checkpoint.config.dimensions().num_layers;
        let sub = models::SubStructure {
            depth: layers,
            ratio: 2,
            compress_layers: vec![1],
        };
        let mut backbone = load_backbone(&f.checkpoint, &Device::Cpu).unwrap();
        let fused = forward(
            backbone.as_ref(),
            &f.heads,
            &f.input,
            &sub,
            MergeMode::Attention,
            false,
        )
        .unwrap();
        // An inert LoRA (B = 0) held in variables switches every layer to the primitives.
        for (_, _, linear) in backbone.projections_mut() {
            let a = Var::from_tensor(
                &Tensor::randn(0f32, 0.1, (2, linear.in_dim()), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let b = Var::from_tensor(
                &Tensor::zeros((linear.out_dim(), 2), candle_core::DType::F32, &Device::Cpu)
                    .unwrap(),
            )
            .unwrap();
            linear.lora = vec![LoraBranch {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 1.0,
            }];
        }
        let primitive = forward(
            backbone.as_ref(),
            &f.heads,
            &f.input,
            &sub,
            MergeMode::Attention,
            false,
        )
        .unwrap();
        for (depth, s) in &fused.scores {
            let err = common::rel_err(&primitive.scores[depth], s);
            assert!(err <= 1e-5, "{name} depth {depth}: {err:e}");
        }
    }
}

/// Teacher scores are keyed by query id: a query in two training files (here the
/// labelled file listed again as unlabeled) is refused, naming both files.
#[test]
fn a_query_in_two_training_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(dir.path(), &[]);
    cfg.data.unlabeled = cfg.data.train.clone();
    let err = load_data(&cfg).err().expect("refused").to_string();
    assert!(
        err.contains("query q1 is also in") && err.contains("train.jsonl"),
        "{err}"
    );
}

/// Adapters record the weights they were trained on: the same base loads them, a copy
/// whose weights differ in one byte (same shapes: another fine-tune, to every other
/// check) is refused with both fingerprints named.
#[test]
fn adapters_refuse_a_base_of_the_same_shape_with_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let trained = train_resuming("tiny-bert", &["stage1.steps=2"], None, dir.path());
    let recorded = trained.meta.base_fingerprint.clone().expect("recorded");
    let path = dir.path().join("out/adapters.safetensors");
    let base = models::Checkpoint::open(fixture("tiny-bert")).unwrap();
    assert_eq!(base.fingerprint().unwrap(), recorded);
    Adapters::for_base(&base, Some(&path), &Device::Cpu).unwrap();

    let other = dir.path().join("other-base");
    std::fs::create_dir(&other).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-bert")).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(&from, other.join(from.file_name().unwrap())).unwrap();
    }
    let weights = other.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header] ^= 0x01; // the first byte of the tensor stored first
    std::fs::write(&weights, bytes).unwrap();
    let other = models::Checkpoint::open(&other).unwrap();
    assert_ne!(other.fingerprint().unwrap(), recorded);
    let err = Adapters::for_base(&other, Some(&path), &Device::Cpu)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("trained on other weights") && err.contains(&recorded),
        "{err}"
    );
}

/// A LoRA pair cut for another projection shape is refused at load, naming the file
/// and the tensor, instead of failing in a matmul at the first forward pass.
#[test]
fn adapters_with_a_lora_of_the_wrong_shape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut trained = train_resuming("tiny-bert", &["stage1.steps=2"], None, dir.path());
    let base = models::Checkpoint::open(fixture("tiny-bert")).unwrap();
    let (set, key) = {
        let (set, loras) = trained.sets.iter().next().expect("a LoRA set");
        (set.clone(), loras.keys().next().unwrap().clone())
    };
    let (a, b) = trained.sets[&set][&key].clone();
    let narrow = b.narrow(0, 0, b.dim(0).unwrap() - 1).unwrap();
    trained
        .sets
        .get_mut(&set)
        .unwrap()
        .insert(key.clone(), (a, narrow));
    let path = dir.path().join("edited.safetensors");
    trained.save(&path).unwrap();
    let err = Adapters::for_base(&base, Some(&path), &Device::Cpu)
        .expect_err("refused")
        .to_string();
    let name = format!("lora.{set}.{}.{}", key.0, key.1);
    assert!(
        err.contains("edited.safetensors") && err.contains(&name),
        "{err}"
    );
}
