//! `mrank inspect` end to end: every fixture and the embedded default describe
//! themselves; a broken directory gives a clear error and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mrank(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mrank"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mrank eval --data D --qrels Q` plus `extra` (a model, options).
fn eval(data: &Path, qrels: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--qrels",
        qrels.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mrank(&args)
}

/// `mrank export --model M --out O` plus `extra` (configurations, flags).
fn export(model: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mrank(&args)
}

/// `mrank eval --data D --qrels Q --configs C --json` plus `extra`.
fn eval_json(data: &Path, qrels: &Path, configs: &str, extra: &[&str]) -> (bool, String, String) {
    eval(
        data,
        qrels,
        &[&["--configs", configs, "--json"], extra].concat(),
    )
}

#[test]
fn inspect_every_fixture() {
    for (name, family) in [
        ("tiny-bert", "bert (bert)"),
        ("tiny-llama", "llama (llama)"),
        ("tiny-mistral", "llama (mistral)"),
        ("tiny-qwen2", "llama (qwen2)"),
        ("tiny-gemma2", "gemma2 (gemma2)"),
    ] {
        let dir = repo().join("fixtures").join(name);
        let (ok, stdout, stderr) = mrank(&["inspect", dir.to_str().unwrap()]);
        assert!(ok, "{name}: {stderr}");
        assert!(
            stdout.contains(&format!("family         {family}")),
            "{name}: {stdout}"
        );
        assert!(
            stdout.contains("full ") && stdout.contains("100.0%"),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn inspect_the_embedded_default() {
    let (ok, stdout, stderr) = mrank(&["inspect"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("layers         6"), "{stdout}");
    assert!(stdout.contains("hidden size    384"), "{stdout}");
    assert!(stdout.contains("vocabulary     30522"), "{stdout}");
    // d3 runs half the layers: half the FLOPs.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("d3 ") && l.ends_with("50.0%")),
        "{stdout}"
    );
}

#[test]
fn inspect_a_broken_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["BertModel"], "hidden_size": 8"#,
    )
    .unwrap();
    let (ok, _, stderr) = mrank(&["inspect", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("config.json") && stderr.contains("invalid JSON"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (ok, _, stderr) = mrank(&["inspect", "/nonexistent/model"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn tiny_data(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data.jsonl");
    let lines = [
        serde_json::json!({"qid": "1", "query": "predict whether passage contains an answer", "candidates": [
            {"docid": "a", "text": "the passage contains an answer"}, {"docid": "b", "text": "tok40 tok41"}, {"docid": "c", "text": "tok50"}]}),
        serde_json::json!({"qid": "2", "query": "query a", "candidates": [
            {"docid": "d", "text": "tok60 tok61"}, {"docid": "e", "text": "query a answer"}]}),
    ];
    std::fs::write(
        &data,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let qrels = dir.join("qrels.txt");
    std::fs::write(&qrels, "1 Q0 a 3\n1 Q0 b 0\n2 Q0 e 2\n7 Q0 z 1\n").unwrap();
    (data, qrels)
}

#[test]
fn eval_json_interface() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let model = repo().join("fixtures/tiny-bert");
    let (ok, stdout, stderr) =
        eval_json(&data, &qrels, "all", &["--model", model.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    // Exactly one JSON object on stdout.
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let configs = value["configs"].as_array().unwrap();
    assert!(value["model"].is_string());
    assert!(configs
        .iter()
        .any(|c| c["id"] == "full" && c["flops_ratio"] == 1.0));
    for c in configs {
        let ndcg = c["ndcg@10"].as_f64().unwrap();
        let mrr = c["mrr@10"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&ndcg) && (0.0..=1.0).contains(&mrr),
            "{c}"
        );
        assert!(c["flops_ratio"].as_f64().unwrap() <= 1.0);
    }
    // The judged query 7 is not in the data: warned and counted.
    assert!(stderr.contains("1 judged queries are not in"), "{stderr}");
    // Per-query figures only when asked for.
    assert!(
        configs.iter().all(|c| c.get("per_query").is_none()),
        "{stdout}"
    );
}

#[test]
fn eval_per_query_lists_each_judged_query_and_averages_to_the_mean() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let model = repo().join("fixtures/tiny-bert");
    let (ok, stdout, stderr) = eval_json(
        &data,
        &qrels,
        "full,d2",
        &["--model", model.to_str().unwrap(), "--per-query"],
    );
    assert!(ok, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for c in value["configs"].as_array().unwrap() {
        let per_query = c["per_query"].as_object().expect("per_query object");
        // Queries 1 and 2 are judged and present; 7 is judged but not in the data.
        let qids: Vec<&str> = per_query.keys().map(String::as_str).collect();
        assert_eq!(qids, ["1", "2"], "{c}");
        for metric in ["ndcg@10", "mrr@10"] {
            let mean = per_query
                .values()
                .map(|q| q[metric].as_f64().unwrap())
                .sum::<f64>()
                / 2.0;
            assert!((mean - c[metric].as_f64().unwrap()).abs() < 1e-12, "{c}");
        }
    }
    // Without --json it is refused, naming the flag it needs.
    let (ok, _, stderr) = eval(
        &data,
        &qrels,
        &["--model", model.to_str().unwrap(), "--per-query"],
    );
    assert!(!ok);
    assert!(stderr.contains("--json"), "{stderr}");
}

#[test]
fn eval_baseline_refuses_flags_that_change_the_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let model = repo().join("fixtures/tiny-bert");
    let (ok, _, stderr) = eval(
        &data,
        &qrels,
        &[
            "--model",
            model.to_str().unwrap(),
            "--baseline",
            "bm25",
            "--merge-mode",
            "idf",
        ],
    );
    assert!(
        !ok && stderr.contains("--merge-mode does not apply to --baseline"),
        "{stderr}"
    );
}

#[test]
fn eval_reports_a_malformed_line_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&data, text).unwrap();
    let model = repo().join("fixtures/tiny-bert");
    let (ok, _, stderr) = eval(&data, &qrels, &["--model", model.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("data.jsonl:3:"), "{stderr}");
}

/// Qrels of another query set judge none of the data's queries: an error, not a table
/// of zeros.
#[test]
fn eval_refuses_qrels_that_judge_none_of_the_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = tiny_data(dir.path());
    let qrels = dir.path().join("other-qrels.txt");
    std::fs::write(&qrels, "77 Q0 z 1\n").unwrap();
    let model = repo().join("fixtures/tiny-bert");
    let (ok, _, stderr) = eval(&data, &qrels, &["--model", model.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("other-qrels.txt") && stderr.contains("judges none"),
        "{stderr}"
    );
}

#[test]
fn eval_readout_applies_to_an_untrained_base_only() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let model = repo().join("fixtures/tiny-bert");
    let eval_full = |extra: &[&str]| eval_json(&data, &qrels, "full", extra);
    let tiny = model.to_str().unwrap();
    // Both engines apply the flags (ONNX Runtime from the adapters alone, without the
    // candle model): the same metrics, and not those of the plain base.
    let metrics = |extra: &[&str]| {
        let (ok, stdout, stderr) = eval_full(&[&["--model", tiny], extra].concat());
        assert!(ok, "{extra:?}: {stderr}");
        let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(value["configs"].as_array().unwrap().len(), 1);
        let row = &value["configs"][0];
        [
            row["ndcg@10"].as_f64().unwrap(),
            row["mrr@10"].as_f64().unwrap(),
        ]
    };
    let flags = ["--readout", "max-sim", "--isolate-segments", "--engine"];
    let candle = metrics(&[&flags[..], &["candle"]].concat());
    let onnx = metrics(&[&flags[..], &["onnx"]].concat());
    assert!(
        candle.iter().zip(&onnx).all(|(a, b)| (a - b).abs() < 1e-9),
        "candle {candle:?}, onnx {onnx:?}"
    );
    assert_ne!(
        onnx,
        metrics(&["--engine", "onnx"]),
        "the flags changed nothing"
    );
    let (ok, _, stderr) = eval_full(&["--model", tiny, "--readout", "mean"]);
    assert!(
        !ok && stderr.contains("use span-product or max-sim"),
        "{stderr}"
    );
    // The embedded default's heads were trained for its own readout.
    for engine in ["candle", "onnx"] {
        let (ok, _, stderr) = eval_full(&["--readout", "span-product", "--engine", engine]);
        assert!(
            !ok && stderr.contains("untrained base only"),
            "{engine}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `--run-dir` writes each configuration's rankings as TREC run files, and they are
/// the rankings the reported metrics were computed from.
#[test]
fn eval_run_dir_writes_the_rankings_it_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let model = repo().join("fixtures/tiny-bert");
    let runs = dir.path().join("runs");
    let (ok, stdout, stderr) = eval_json(
        &data,
        &qrels,
        "full,d2",
        &[
            "--model",
            model.to_str().unwrap(),
            "--engine",
            "onnx",
            "--per-query",
            "--run-dir",
            runs.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for row in value["configs"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        let text = std::fs::read_to_string(runs.join(format!("{id}.run"))).unwrap();
        assert!(!runs.join(format!("{id}.run.partial")).exists());
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        // Both queries are judged: 3 + 2 candidates, ranks from 1, scores falling.
        assert_eq!(lines.len(), 5, "{id}: {text}");
        for query in ["1", "2"] {
            let mine: Vec<&Vec<&str>> = lines.iter().filter(|l| l[0] == query).collect();
            let ranks: Vec<usize> = mine.iter().map(|l| l[3].parse().unwrap()).collect();
            assert_eq!(ranks, (1..=mine.len()).collect::<Vec<_>>(), "{id}: {text}");
            let scores: Vec<f32> = mine.iter().map(|l| l[4].parse().unwrap()).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{id}: {text}");
            assert!(mine
                .iter()
                .all(|l| l[1] == "Q0" && l[5] == format!("mrank-{id}")));
        }
        // Query 1's one relevant passage is `a`: MRR@10 is one over its rank in the file.
        let rank_a: f64 = lines.iter().find(|l| l[0] == "1" && l[2] == "a").unwrap()[3]
            .parse()
            .unwrap();
        let mrr = row["per_query"]["1"]["mrr@10"].as_f64().unwrap();
        assert!(
            (mrr - 1.0 / rank_a).abs() < 1e-12,
            "{id}: mrr {mrr}, rank {rank_a}"
        );
    }
    // The candle engine does not write runs: refused before anything is scored.
    let (ok, _, stderr) = eval_json(
        &data,
        &qrels,
        "full",
        &[
            "--model",
            model.to_str().unwrap(),
            "--run-dir",
            runs.to_str().unwrap(),
        ],
    );
    assert!(!ok && stderr.contains("--engine onnx"), "{stderr}");
}

/// `--force` replaces a training run only, and only once everything the new run reads
/// has been checked: a typo in the config leaves the old run in place.
#[test]
fn train_force_checks_before_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("train.toml"), "[run]\nseed = 1\n").unwrap();
    std::fs::write(run.join("adapters.safetensors"), b"the old run").unwrap();
    let bad = dir.path().join("typo.toml");
    std::fs::write(&bad, "[stage1]\nstep = 5\n").unwrap();
    let (ok, _, stderr) = mrank(&[
        "train",
        "--out",
        run.to_str().unwrap(),
        "--force",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("typo.toml") && stderr.contains("step"),
        "{stderr}"
    );
    assert!(
        run.join("adapters.safetensors").exists(),
        "the old run was deleted"
    );
    // A directory that holds no training run is never deleted.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"keep me").unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[data]\ntrain = [{:?}]\nqrels = [{:?}]\n",
            data.display().to_string(),
            qrels.display().to_string()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = mrank(&[
        "train",
        "--out",
        other.to_str().unwrap(),
        "--force",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("holds none"), "{stderr}");
    assert!(other.join("notes.txt").exists());
    // A value out of range (checked once the base model's depth is known) also fails
    // before the old run is touched.
    let (ok, _, stderr) = mrank(&[
        "train",
        "--out",
        run.to_str().unwrap(),
        "--force",
        "--config",
        good.to_str().unwrap(),
        "--set",
        "stage1.lr=-1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("stage1.lr"), "{stderr}");
    assert!(
        run.join("adapters.safetensors").exists(),
        "the old run was deleted"
    );
    // A resumed run keeps its config: an override other than the threads is refused.
    let (ok, _, stderr) = mrank(&[
        "train",
        "--out",
        run.to_str().unwrap(),
        "--resume",
        "--set",
        "lora.rank=2",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("lora.rank") && stderr.contains("would change what its checkpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn train_refuses_to_overwrite_another_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.toml"), "[run]\nseed = 1\n").unwrap();
    let (ok, _, stderr) = mrank(&["train", "--out", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("--resume") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn eval_uses_the_embedded_default_without_model() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let (ok, stdout, stderr) = eval_json(&data, &qrels, "full,d3", &[]);
    assert!(ok, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        value["model"]
            .as_str()
            .unwrap()
            .contains("embedded default"),
        "{value}"
    );
    assert_eq!(value["configs"].as_array().unwrap().len(), 2);
}

#[test]
fn missing_onnxruntime_library_says_how_to_set_it_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_mrank"))
        .args([
            "bench",
            "--load-only",
            "--export",
            "/nonexistent",
            "--data",
            "/nonexistent",
        ])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ONNX Runtime library not found at /nonexistent/libonnxruntime.so"),
        "{stderr}"
    );
    assert!(stderr.contains("make setup"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn export_writes_a_manifest_that_bench_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let model = repo().join("fixtures/tiny-bert");
    let (ok, stdout, stderr) = export(
        &model,
        &out,
        &["--configs", "full,d2,d2-r2@1", "--max-length", "64"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("d2-r2@1"), "{stdout}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let configs = manifest["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 3);
    for c in configs {
        assert!(c["latency_ms"].as_f64().unwrap() > 0.0, "{c}");
        assert!(out.join(c["graph"].as_str().unwrap()).exists());
    }
    assert!(configs.iter().any(|c| c["frontier"] == true));
    bench_loads(&out, 3);
    // Exporting again into the same export replaces it: only the new graphs remain.
    std::fs::write(out.join("d9-stale.onnx"), b"old").unwrap();
    let (ok, _, stderr) = export(
        &model,
        &out,
        &["--configs", "full", "--max-length", "64", "--no-latency"],
    );
    assert!(ok, "{stderr}");
    assert!(!out.join("d9-stale.onnx").exists());
    bench_loads(&out, 1);
}

/// `--out` must not be the model itself (copying its config.json onto itself would empty
/// it) nor a directory of other files; both are refused before anything is written.
#[test]
fn export_refuses_to_write_over_the_model_or_unrelated_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-bert");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(repo().join("fixtures/tiny-bert")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let before = std::fs::read(model.join("config.json")).unwrap();
    let export_to = |out: &Path| export(&model, out, &["--configs", "full", "--no-latency"]);
    let (ok, _, stderr) = export_to(&model);
    assert!(!ok);
    assert!(
        stderr.contains("--out is the model being exported"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(model.join("config.json")).unwrap(), before);
    let other = dir.path().join("notes");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("todo.txt"), b"keep me").unwrap();
    let (ok, _, stderr) = export_to(&other);
    assert!(!ok);
    assert!(stderr.contains("not an earlier export"), "{stderr}");
    assert_eq!(std::fs::read(other.join("todo.txt")).unwrap(), b"keep me");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // What an export that failed halfway leaves (graphs, no manifest) is an export to
    // replace, not a stranger's directory; the user's own file there stays.
    let half = dir.path().join("half");
    std::fs::create_dir(&half).unwrap();
    std::fs::write(half.join("d2.onnx"), b"partial").unwrap();
    std::fs::write(half.join("README.txt"), b"mine").unwrap();
    let (ok, _, stderr) = export_to(&half);
    assert!(ok, "{stderr}");
    assert!(half.join("manifest.json").is_file());
    assert!(!half.join("d2.onnx").exists());
    assert_eq!(std::fs::read(half.join("README.txt")).unwrap(), b"mine");
}

/// `mrank bench --load-only` loads all `n` configurations of the export in `out`.
fn bench_loads(out: &Path, n: usize) {
    let (ok, stdout, stderr) = mrank(&[
        "bench",
        "--load-only",
        "--export",
        out.to_str().unwrap(),
        "--data",
        "/unused",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("\"configs\": {n}")), "{stdout}");
}

#[test]
fn export_int8_adds_a_twin_of_every_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-int8");
    let model = repo().join("fixtures/tiny-bert");
    let (ok, _, stderr) = export(
        &model,
        &out,
        &[
            "--configs",
            "full,d2",
            "--int8",
            "--no-latency",
            "--max-length",
            "64",
        ],
    );
    assert!(ok, "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let mut ids: Vec<(String, String)> = manifest["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["precision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    let expected = [
        ("d2", "f32"),
        ("d2-int8", "int8"),
        ("full", "f32"),
        ("full-int8", "int8"),
    ];
    assert_eq!(
        ids,
        expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let tensors = manifest["shared_weights"]["tensors"].as_array().unwrap();
    assert!(
        tensors.iter().any(|t| t["dtype"] == "i8"),
        "no int8 weights"
    );
    bench_loads(&out, 4);
}

/// `--passage-caps` adds capped copies that run their twins' graphs (no new graph
/// files), and both engines evaluate a capped configuration alike.
#[test]
fn passage_caps_export_without_new_graphs_and_evaluate_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-caps");
    let model_dir = repo().join("fixtures/tiny-bert");
    let model = model_dir.to_str().unwrap();
    let (ok, _, stderr) = export(
        &model_dir,
        &out,
        &[
            "--configs",
            "full,d2",
            "--int8",
            "--passage-caps",
            "2,3",
            "--no-latency",
            "--max-length",
            "64",
        ],
    );
    assert!(ok, "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let configs = manifest["configs"].as_array().unwrap();
    assert_eq!(
        configs.len(),
        12,
        "4 configurations, each also capped at 2 and 3"
    );
    let capped = configs.iter().find(|c| c["id"] == "d2-p3-int8").unwrap();
    assert_eq!(capped["passage_tokens"], 3);
    assert_eq!(capped["graph"], "d2-int8.onnx");
    let graphs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "onnx")
        })
        .count();
    assert_eq!(graphs, 4);
    bench_loads(&out, 12);
    let (ok, _, stderr) = export(
        &model_dir,
        &dir.path().join("zero"),
        &["--passage-caps", "0", "--no-latency"],
    );
    assert!(!ok && stderr.contains("--passage-caps 0"), "{stderr}");

    let (data, qrels) = tiny_data(dir.path());
    // (id, nDCG@10, FLOPs on the data) of each configuration.
    let metrics = |engine: &str| -> Vec<(String, f64, f64)> {
        let (ok, stdout, stderr) = eval_json(
            &data,
            &qrels,
            "full,full-p1,d2-p2",
            &["--model", model, "--engine", engine],
        );
        assert!(ok, "{stderr}");
        let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        value["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert!(c["flops_ratio"].as_f64().unwrap() <= 1.0, "{c}");
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["ndcg@10"].as_f64().unwrap(),
                    c["flops_ratio_on_data"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (candle, onnx) = (metrics("candle"), metrics("onnx"));
    assert_eq!(candle.len(), 3);
    for ((id, a, fa), (id2, b, fb)) in candle.iter().zip(&onnx) {
        assert_eq!(id, id2);
        assert!((a - b).abs() < 1e-4, "{id}: candle {a} onnx {b}");
        assert!((fa - fb).abs() < 1e-9, "{id}: FLOPs on data {fa} vs {fb}");
    }
    // Every judged passage of the tiny data is longer than one token: a cap of one
    // saves FLOPs on it, and full costs exactly full.
    assert_eq!(candle[0].2, 1.0);
    assert!(candle[1].2 < 1.0, "{candle:?}");
}

#[test]
fn int8_configurations_evaluate_through_onnx_only() {
    let dir = tempfile::tempdir().unwrap();
    let (data, qrels) = tiny_data(dir.path());
    let model = repo().join("fixtures/tiny-bert");
    let model = model.to_str().unwrap();
    let (ok, _, stderr) = eval_json(&data, &qrels, "full,full-int8", &["--model", model]);
    assert!(!ok);
    assert!(
        stderr.contains("full-int8") && stderr.contains("--engine onnx"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, stdout, stderr) = eval_json(
        &data,
        &qrels,
        "full,full-int8",
        &["--model", model, "--engine", "onnx"],
    );
    assert!(ok, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let ids: Vec<&str> = value["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["full", "full-int8"]);
    let (ok, _, stderr) = eval_json(&data, &qrels, "full-int4", &["--model", model]);
    assert!(!ok && stderr.contains("full-int4"), "{stderr}");
}

/// A bad load shape fails before any data is read (the paths here do not exist), with
/// the flag and the problem named; `--profile` with `--to-rps` is a usage error.
#[test]
fn replay_refuses_a_bad_profile_before_reading_data() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "replay",
            "--data",
            "/nonexistent/data.jsonl",
            "--qrels",
            "/nonexistent/qrels.txt",
        ];
        args.extend_from_slice(extra);
        mrank(&args)
    };
    let (ok, _, stderr) = run(&["--profile", "0:1,20:6,20:1"]);
    assert!(!ok);
    assert!(
        stderr.contains("--profile") && stderr.contains("must increase"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["--mode", "saturate", "--profile", "0:1,20:6"]);
    assert!(!ok);
    assert!(stderr.contains("--mode ramp"), "{stderr}");
    let (ok, _, stderr) = run(&["--profile", "0:1,20:6", "--to-rps", "3"]);
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let (ok, _, stderr) = run(&["--from-rps", "0", "--to-rps", "0"]);
    assert!(!ok);
    assert!(stderr.contains("nothing would be sent"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = run(&["--mode", "saturate", "--duration-s=-1"]);
    assert!(!ok);
    assert!(
        stderr.contains("--duration-s must be a positive"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["--mode", "saturate", "--concurrency", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--concurrency"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A short training config on tiny-bert and `tiny_data` (3 stage-1 steps, 2 vertical).
fn tiny_train_config(dir: &Path) -> PathBuf {
    let (data, qrels) = tiny_data(dir);
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nbase = {:?}\nreadout = \"scoring-position\"\nmax_length = 48\n\
             [data]\ntrain = [{:?}]\nqrels = [{:?}]\ngroup_size = 2\nteacher = \"none\"\n\
             [lora]\nrank = 2\n[space]\nmin_depth = 1\nratios = [2]\ncompress_layers = [1]\n\
             [stage1]\nsteps = 3\n[stage2]\nvertical_steps = 2\nhorizontal_steps = 0\n",
            repo().join("fixtures/tiny-bert").display().to_string(),
            data.display().to_string(),
            qrels.display().to_string()
        ),
    )
    .unwrap();
    config
}

/// A trained model as teacher is scored through ONNX Runtime when its library is set
/// up, else by the candle forward; both write the same teacher scores (within 1e-4).
#[test]
fn a_model_teacher_scores_alike_through_onnx_runtime_and_candle() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path());
    let config = config.to_str().unwrap();
    let teacher = dir.path().join("teacher");
    let (ok, _, stderr) = mrank(&[
        "train",
        "--config",
        config,
        "--out",
        teacher.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let teacher_model = format!("data.teacher_model={}", teacher.display());
    let student = |name: &str, onnx: bool| {
        let out = dir.path().join(name);
        let mut command = Command::new(env!("CARGO_BIN_EXE_mrank"));
        command.args([
            "train",
            "--config",
            config,
            "--out",
            out.to_str().unwrap(),
            "--set",
            "data.teacher=model",
            "--set",
            &teacher_model,
            "--set",
            "stage1.steps=1",
        ]);
        if !onnx {
            command.env_remove("ORT_DYLIB_PATH");
        }
        let run = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{name}: {stderr}");
        assert_eq!(
            stderr.contains("through ONNX Runtime"),
            onnx,
            "{name}: {stderr}"
        );
        candle_core::safetensors::load(out.join("teacher.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    let onnx = student("onnx", true);
    let candle = student("candle", false);
    assert_eq!(onnx.len(), 2, "one score list per training query");
    for (qid, c) in &candle {
        let (c, o) = (
            c.to_vec1::<f32>().unwrap(),
            onnx[qid].to_vec1::<f32>().unwrap(),
        );
        assert_eq!(c.len(), o.len());
        for (a, b) in c.iter().zip(&o) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{qid}: {c:?} vs {o:?}"
            );
        }
    }
}

/// `--resume` may change phases the checkpoint has not run yet (here: add horizontal
/// steps to a finished run), never one it has (stage 1's steps).
#[test]
fn resume_changes_only_phases_not_yet_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path());
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let (ok, _, stderr) = mrank(&["train", "--config", config.to_str().unwrap(), "--out", out]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = mrank(&["train", "--out", out, "--resume", "--set", "stage1.steps=2"]);
    assert!(!ok);
    assert!(
        stderr.contains("phases the checkpoint has already run"),
        "{stderr}"
    );
    let saved = std::fs::read_to_string(dir.path().join("run/train.toml")).unwrap();
    assert!(
        saved.contains("steps = 3"),
        "a refused resume rewrote the config: {saved}"
    );
    // The vertical phase has run: its adapters are named by the buckets.
    let (ok, _, stderr) = mrank(&[
        "train",
        "--out",
        out,
        "--resume",
        "--set",
        "stage2.depth_buckets=[[1, 1], [2, 3]]",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("stage2.depth_buckets") && stderr.contains("already trained"),
        "{stderr}"
    );
    let (ok, _, stderr) = mrank(&[
        "train",
        "--out",
        out,
        "--resume",
        "--set",
        "stage2.horizontal_steps=2",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("horizontal-r2"), "{stderr}");
}

/// Serving limits out of range are refused before anything loads, naming the flag.
#[test]
fn serve_refuses_limits_out_of_range() {
    for (flag, value, says) in [
        (
            "--batch-tokens",
            "100000000",
            "--batch-tokens must be between",
        ),
        ("--max-documents", "0", "--max-documents must be between"),
        (
            "--max-queued-tokens",
            "0",
            "--max-queued-tokens must be at least",
        ),
        ("--threads", "100000", "--threads 100000"),
    ] {
        let (ok, _, stderr) = mrank(&["serve", flag, value]);
        assert!(!ok, "{flag} {value}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
