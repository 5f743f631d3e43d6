//! The embedded default (all-MiniLM-L6-v2 + the committed adapters): every configuration
//! of its space exported and scored by ONNX Runtime equals the candle forward on real
//! DL19 pairs, in one padded batch.

use std::path::{Path, PathBuf};

use candle_core::Device;
use export::{export, ExportRequest};
use models::runtime::RuntimeOptions;
use models::{EncodedPair, PaddedBatch, Runtime, SubStructureSpace};
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
        configs: configs.clone(),
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
