//! The embedded default (all-MiniLM-L6-v2 + the committed adapters): every configuration
//! of its space exported and scored by ONNX Runtime equals the candle forward on real
//! DL19 pairs, in one padded batch.

use std::path::{Path, PathBuf};

use candle_core::Device;
use export::{export, ExportRequest};
use models::runtime::RuntimeOptions;
use models::{Configuration, EncodedPair, PaddedBatch, Runtime, SubStructureSpace};
use trainer::reranker::Reranker;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn minilm_dir() -> PathBuf {
    std::env::var_os("MRANK_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/all-minilm-l6-v2"))
}

#[test]
fn embedded_default_onnx_matches_candle_for_every_configuration() {
    let adapters = root().join("adapters/minilm-l6/adapters.safetensors");
    let max_length = 256;
    let space = SubStructureSpace::default_for(6);
    let configs = space.enumerate();
    let out = tempfile::tempdir().unwrap();
    let manifest = export(&ExportRequest {
        model_dir: &minilm_dir(),
        adapters: Some(&adapters),
        configs: configs.iter().cloned().map(Configuration::f32).collect(),
        out: out.path(),
        merge_adapters: false,
        max_length,
    })
    .unwrap();
    assert_eq!(manifest.configs.len(), configs.len());
    let runtime = Runtime::load(
        out.path(),
        &RuntimeOptions {
            cuda: cuda_requested(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut reranker =
        Reranker::load(&minilm_dir(), Some(&adapters), max_length, &Device::Cpu).unwrap();

    let pairs_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/minilm-dl19/pairs.json")).unwrap(),
    )
    .unwrap();
    let pairs: Vec<EncodedPair> = pairs_json
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|p| {
            reranker
                .encoder
                .encode(
                    p["query"].as_str().unwrap(),
                    p["passage"].as_str().unwrap(),
                    None,
                )
                .unwrap()
        })
        .collect();
    let batch = PaddedBatch::new(&pairs, reranker.encoder.pad_id);
    for sub in &configs {
        let id = sub.id(6);
        let expected = reranker.score_pairs(&pairs, sub, 1 << 20).unwrap();
        let got = runtime.run(&id, &batch).unwrap();
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (a, b) in expected.iter().zip(&got) {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{id}: onnx {got:?} vs candle {expected:?}"
            );
        }
    }
}

/// `MRANK_TEST_CUDA=1` runs the graphs on the CUDA execution provider (a test binary
/// built with `--features cuda`, onnxruntime-gpu as ORT_DYLIB_PATH); never set in CI.
fn cuda_requested() -> bool {
    std::env::var("MRANK_TEST_CUDA").is_ok_and(|v| v == "1")
}

fn dl19(file: &str) -> PathBuf {
    root().join("../shared/data/trec-dl").join(file)
}

/// The int8 twins of the embedded default on real DL19 candidates: close to their f32
/// graphs score for score, and the same ranking almost everywhere.
#[test]
fn embedded_default_int8_tracks_f32_on_dl19() {
    let adapters = root().join("adapters/minilm-l6/adapters.safetensors");
    let max_length = 256;
    let subs = [
        models::SubStructure::full(6),
        models::SubStructure::parse("d2-r4@1", 6, 2).unwrap(),
    ];
    let out = tempfile::tempdir().unwrap();
    export(&ExportRequest {
        model_dir: &minilm_dir(),
        adapters: Some(&adapters),
        configs: subs
            .iter()
            .cloned()
            .map(Configuration::f32)
            .chain(subs.iter().cloned().map(Configuration::int8))
            .collect(),
        out: out.path(),
        merge_adapters: false,
        max_length,
    })
    .unwrap();
    let runtime = Runtime::load(out.path(), &RuntimeOptions::default()).unwrap();
    // What `mrank serve` runs: the same graphs without ONNX Runtime's CPU arena.
    let no_arena = Runtime::load(
        out.path(),
        &RuntimeOptions {
            cpu_arena: false,
            ..Default::default()
        },
    )
    .unwrap();
    let queries = trainer::data::read_candidates(&dl19("dl19-bm25-top100.jsonl")).unwrap();
    for q in queries.iter().take(2) {
        let pairs: Vec<EncodedPair> = q
            .candidates
            .iter()
            .take(50)
            .map(|c| runtime.encoder.encode(&q.query, &c.text, None).unwrap())
            .collect();
        for sub in &subs {
            let id = sub.id(6);
            let f32_scores = runtime.score_pairs(&id, &pairs, 8192).unwrap();
            let int8 = runtime
                .score_pairs(&format!("{id}-int8"), &pairs, 8192)
                .unwrap();
            for other in [id.clone(), format!("{id}-int8")] {
                let with_arena = runtime.score_pairs(&other, &pairs, 8192).unwrap();
                let without = no_arena.score_pairs(&other, &pairs, 8192).unwrap();
                assert_eq!(with_arena, without, "{other}: scores depend on the arena");
            }
            let r = pearson(&f32_scores, &int8);
            let overlap = top_k(&f32_scores, 10)
                .iter()
                .filter(|i| top_k(&int8, 10).contains(i))
                .count();
            let mean_delta = f32_scores
                .iter()
                .zip(&int8)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / pairs.len() as f32;
            eprintln!(
                "query {}: {id}-int8 vs f32: pearson {r:.5}, top-10 overlap {overlap}, mean |Δ| \
                 {mean_delta:.4} (score std {:.4})",
                q.qid,
                std_dev(&f32_scores)
            );
            assert!(
                mean_delta > 0.0,
                "{id}-int8 scores equal f32's: not quantized"
            );
            assert!(r >= 0.99, "{id}-int8 vs f32: pearson {r}");
            assert!(overlap >= 8, "{id}-int8 vs f32: top-10 overlap {overlap}");
        }
    }
}

fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(k);
    order
}

fn std_dev(x: &[f32]) -> f32 {
    let m = x.iter().sum::<f32>() / x.len() as f32;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f32>() / x.len() as f32).sqrt()
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let (ma, mb) = (
        a.iter().sum::<f32>() / a.len() as f32,
        b.iter().sum::<f32>() / b.len() as f32,
    );
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    cov / (std_dev(a) * std_dev(b) * a.len() as f32)
}
