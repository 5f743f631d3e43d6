//! candle implementations of each model family, one file per family, each mirroring the
//! Hugging Face module tree so weight names read like the checkpoint's.

pub mod bert;
pub mod gemma2;
pub mod llama;

use candle_core::{Device, Tensor};
use models::{Checkpoint, ModelConfig};

use crate::error::Result;
use crate::forward::Backbone;
use crate::linear::Linear;

/// Loads the backbone of any supported checkpoint.
pub fn load_backbone(
    checkpoint: &Checkpoint,
    device: &Device,
) -> Result<Box<dyn Backbone + Send + Sync>> {
    Ok(match &checkpoint.config {
        ModelConfig::Bert(c) => Box::new(bert::Bert::load(checkpoint, c, device)?),
        ModelConfig::Llama(c) => Box::new(llama::Llama::load(checkpoint, c, device)?),
        ModelConfig::Gemma2(c) => Box::new(gemma2::Gemma2::load(checkpoint, c, device)?),
    })
}

/// Reads a tensor from the checkpoint by canonical name.
pub(crate) fn tensor(checkpoint: &Checkpoint, name: &str, device: &Device) -> Result<Tensor> {
    let t = checkpoint.tensor(name)?;
    Ok(Tensor::from_vec(t.data, t.shape, device)?)
}

/// `{prefix}.weight` and, when `bias`, `{prefix}.bias`.
pub(crate) fn linear(
    checkpoint: &Checkpoint,
    prefix: &str,
    bias: bool,
    device: &Device,
) -> Result<Linear> {
    let weight = tensor(checkpoint, &format!("{prefix}.weight"), device)?;
    let bias = if bias {
        Some(tensor(checkpoint, &format!("{prefix}.bias"), device)?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// Flattens per-layer projections into (layer, name, linear).
pub(crate) fn layer_projections<L: LoraTargets>(
    layers: &mut [L],
) -> Vec<(usize, &'static str, &mut Linear)> {
    layers
        .iter_mut()
        .enumerate()
        .flat_map(|(i, l)| l.projections_mut().into_iter().map(move |(n, p)| (i, n, p)))
        .collect()
}

/// The LoRA target projections of a layer, by the names the trainer config uses
/// (`q`, `k`, `v`, `o`, and the MLP's `up`/`down`, plus `gate` for gated MLPs).
pub trait LoraTargets {
    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)>;
}
