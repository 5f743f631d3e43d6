//! Bad export directories and adapters fail at load with an error naming the problem.

use std::path::{Path, PathBuf};

use export::{export, ExportRequest};
use models::runtime::RuntimeOptions;
use models::{Configuration, Runtime, SubStructure};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn export_tiny_bert(out: &Path) {
    export(&ExportRequest {
        model_dir: &fixture("tiny-bert"),
        adapters: None,
        configs: vec![
            Configuration::f32(SubStructure::full(3)),
            Configuration::f32(SubStructure::depth_only(2)),
        ],
        out,
        merge_adapters: false,
        max_length: 64,
    })
    .unwrap();
}

fn load_err(dir: &Path) -> String {
    match Runtime::load(dir, &RuntimeOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn manifest_naming_a_missing_graph() {
    let dir = tempfile::tempdir().unwrap();
    export_tiny_bert(dir.path());
    std::fs::remove_file(dir.path().join("d2.onnx")).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("d2.onnx") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn graph_inputs_that_do_not_match_the_family() {
    let dir = tempfile::tempdir().unwrap();
    export_tiny_bert(dir.path());
    // A manifest claiming decoder inputs (no token types) for BERT graphs.
    let path = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"token_type_ids\",", "")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("graph inputs are"), "{err}");
    assert!(err.contains("token_type_ids"), "{err}");
}

#[test]
fn missing_manifest_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("manifest.json") && err.contains("mrank export"),
        "{err}"
    );
}

#[test]
fn adapters_trained_for_another_model() {
    let bert = models::Checkpoint::open(fixture("tiny-bert")).unwrap();
    let dims = bert.config.dimensions();
    let adapters = trainer::adapters::Adapters::untrained(
        bert.config.variant_name(),
        &dims,
        1,
        trainer::Readout::SpanProduct,
        1.0,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bert-adapters.safetensors");
    adapters.save(&file).unwrap();
    let out = dir.path().join("out");
    let err = export(&ExportRequest {
        model_dir: &fixture("tiny-llama"),
        adapters: Some(&file),
        configs: vec![Configuration::f32(SubStructure::full(3))],
        out: &out,
        merge_adapters: false,
        max_length: 64,
    })
    .map(|_| ())
    .expect_err("llama export with bert adapters must fail")
    .to_string();
    assert!(
        err.contains("bert-adapters.safetensors") && err.contains("trained for"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
}
