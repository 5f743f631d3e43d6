//! A broken checkpoint directory fails at open with the file and the problem named.
//! Each case starts from the tiny BERT fixture copied into a temporary directory.

use std::path::{Path, PathBuf};

use models::{Checkpoint, ModelsError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn open_err(dir: &Path) -> (ModelsError, String) {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened although it is broken", dir.display()),
        Err(e) => {
            let text = e.to_string();
            (e, text)
        }
    }
}

#[test]
fn the_intact_fixture_opens() {
    let dir = copy_fixture("tiny-bert");
    Checkpoint::open(dir.path()).unwrap();
}

#[test]
fn missing_file_is_named() {
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let dir = copy_fixture("tiny-bert");
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let (err, text) = open_err(dir.path());
        assert!(
            matches!(err, ModelsError::MissingFile { .. }),
            "{file}: {text}"
        );
        assert!(text.contains(file), "{file}: {text}");
    }
}

#[test]
fn unknown_architecture_is_named() {
    let dir = copy_fixture("tiny-bert");
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["T5ForConditionalGeneration"]);
    std::fs::write(&path, config.to_string()).unwrap();
    let (err, text) = open_err(dir.path());
    assert!(
        matches!(err, ModelsError::UnknownArchitecture { .. }),
        "{text}"
    );
    assert!(
        text.contains("T5ForConditionalGeneration") && text.contains("config.json"),
        "{text}"
    );
    assert!(
        text.contains("BertModel"),
        "the message lists what is supported: {text}"
    );
}

#[test]
fn tensor_of_wrong_shape_is_named() {
    let dir = copy_fixture("tiny-bert");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = "encoder.layer.0.intermediate.dense.weight";
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut data = view.data().to_vec();
        if name == victim {
            // Drop the last output row: a plausible corrupted or mismatched export.
            let row = shape[1] * 4;
            shape[0] -= 1;
            data.truncate(data.len() - row);
        }
        owned.push((name, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let (err, text) = open_err(dir.path());
    assert!(matches!(err, ModelsError::TensorShape { .. }), "{text}");
    assert!(
        text.contains(victim) && text.contains("model.safetensors"),
        "{text}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = copy_fixture("tiny-bert");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (err, text) = open_err(dir.path());
    assert!(matches!(err, ModelsError::Safetensors { .. }), "{text}");
    assert!(
        text.contains("model.safetensors") && text.contains("truncated"),
        "{text}"
    );
}

#[test]
fn tokenizer_of_another_model_is_refused() {
    // The real MiniLM tokenizer (30522 tokens) in the 256-token tiny BERT.
    let minilm = std::env::var_os("MRANK_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/all-minilm-l6-v2")
        });
    let source = minilm.join("tokenizer.json");
    assert!(
        source.exists(),
        "{} is missing: run scripts/setup.sh",
        source.display()
    );
    let dir = copy_fixture("tiny-bert");
    std::fs::copy(&source, dir.path().join("tokenizer.json")).unwrap();
    let (err, text) = open_err(dir.path());
    assert!(matches!(err, ModelsError::Tokenizer { .. }), "{text}");
    assert!(
        text.contains("tokenizer.json") && text.contains("vocab_size"),
        "{text}"
    );
}

#[test]
fn sharded_checkpoint_loads_every_shard() {
    let dir = fixture("tiny-qwen2");
    assert!(
        dir.join("model.safetensors.index.json").exists(),
        "the qwen2 fixture is sharded"
    );
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let layers = checkpoint.config.dimensions().num_layers;
    for l in 0..layers {
        assert!(checkpoint.has_tensor(&format!("model.layers.{l}.self_attn.q_proj.bias")));
    }
}
