//! Shared helpers for the fixture-based tests: loading fixtures and comparing tensors at
//! real (unpadded) positions.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use models::{Checkpoint, Span};
use trainer::linear::Linear;
use trainer::{Heads, ModelInput, RowLayout};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

pub fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ints(t: &Tensor) -> Vec<usize> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

/// A tiny fixture: checkpoint, inputs on the device, heads, references.
pub struct Fixture {
    pub checkpoint: Checkpoint,
    pub input: ModelInput,
    pub heads: Heads,
    pub reference: HashMap<String, Tensor>,
}

pub fn tiny(name: &str) -> Fixture {
    let dir = fixture(name);
    let checkpoint = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    let inputs = load(&dir.join("inputs.safetensors"));
    let ids = inputs["input_ids"].to_dtype(DType::U32).unwrap();
    let (b, t) = ids.dims2().unwrap();
    let types = match inputs.get("token_type_ids") {
        Some(tt) => tt.to_dtype(DType::U32).unwrap(),
        None => Tensor::zeros((b, t), DType::U32, &Device::Cpu).unwrap(),
    };
    let mask = inputs["attention_mask"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    let lengths: Vec<usize> = mask
        .iter()
        .map(|r| r.iter().sum::<i64>() as usize)
        .collect();
    let starts = ints(&inputs["passage_start"]);
    let lens = ints(&inputs["passage_len"]);
    let layout = RowLayout {
        seq_len: t,
        query: vec![Span::default(); b],
        lengths,
        passage: starts
            .iter()
            .zip(&lens)
            .map(|(&start, &len)| Span { start, len })
            .collect(),
        score_pos: ints(&inputs["score_pos"]),
    };
    let head_tensors = load(&dir.join("heads.safetensors"));
    let mut heads = Heads::default();
    for (name, w) in &head_tensors {
        if let Some(depth) = name
            .strip_prefix("heads.")
            .and_then(|r| r.strip_suffix(".weight"))
        {
            let depth: usize = depth.parse().unwrap();
            let b = head_tensors[&format!("heads.{depth}.bias")].clone();
            heads
                .by_depth
                .insert(depth, Linear::new(w.clone(), Some(b)));
        }
    }
    Fixture {
        checkpoint,
        input: ModelInput {
            input_ids: ids,
            token_type_ids: types,
            layout,
        },
        heads,
        reference: load(&dir.join("reference.safetensors")),
    }
}

/// max |x| over all elements.
pub fn max_abs(x: &Tensor) -> f32 {
    x.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| over all elements of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Norm-relative error at real positions: max |a - b| / max |b| over the first
/// `lengths[row]` positions of each row of `[B, T, H]` tensors (T may differ).
pub fn rel_err_real(a: &Tensor, b: &Tensor, lengths: &[usize]) -> f32 {
    let mut max_diff = 0f32;
    let mut max_ref = 0f32;
    for (row, &len) in lengths.iter().enumerate() {
        let x = a.get(row).unwrap().narrow(0, 0, len).unwrap();
        let y = b.get(row).unwrap().narrow(0, 0, len).unwrap();
        max_diff = max_diff.max(max_abs_diff(&x, &y));
        max_ref = max_ref.max(max_abs(&y));
    }
    max_diff / max_ref.max(f32::MIN_POSITIVE)
}

/// Norm-relative error of two vectors.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b).max(f32::MIN_POSITIVE)
}
