//! BERT encoder (Devlin et al., 2019) as a cross-encoder; mirrors `transformers`'
//! `BertModel` (post-norm blocks, erf GELU, absolute positions, token types).

use candle_core::{Device, Tensor};
use models::families::BertConfig;
use models::Checkpoint;

use super::{linear, tensor, LoraTargets};
use crate::error::{Result, TrainerError};
use crate::forward::{Backbone, ModelInput, Readout};
use crate::layers::{
    layer_norm, merge_heads, padding_mask, scoring_attention, segment_mask, segment_positions,
    softmax_last, split_heads,
};
use crate::linear::Linear;
use crate::merge::RowLayout;

pub struct Norm {
    weight: Tensor,
    bias: Tensor,
}

pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_output: Linear,
    attention_norm: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    output_norm: Norm,
}

pub struct Bert {
    config: BertConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embedding_norm: Norm,
    pub layers: Vec<BertLayer>,
    isolate_segments: bool,
    device: Device,
}

/// Where each row's passage segment starts under isolation: at the passage's own `[CLS]`,
/// the token just before the passage. Rows must come from
/// `PairEncoder::with_isolated_segments`; width merging only compacts the passage, so this
/// stays true after every merge.
fn passage_segment_starts(layout: &RowLayout) -> Vec<usize> {
    layout
        .passage
        .iter()
        .map(|s| s.start.saturating_sub(1))
        .collect()
}

fn norm(checkpoint: &Checkpoint, prefix: &str, device: &Device) -> Result<Norm> {
    Ok(Norm {
        weight: tensor(checkpoint, &format!("{prefix}.weight"), device)?,
        bias: tensor(checkpoint, &format!("{prefix}.bias"), device)?,
    })
}

impl Bert {
    pub fn load(checkpoint: &Checkpoint, config: &BertConfig, device: &Device) -> Result<Self> {
        if !matches!(
            config.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return Err(TrainerError::Input(format!(
                "{}: hidden_act {:?} is not supported for bert (gelu, gelu_new, gelu_pytorch_tanh)",
                checkpoint.dir.join("config.json").display(),
                config.hidden_act
            )));
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    query: linear(
                        checkpoint,
                        &format!("{p}.attention.self.query"),
                        true,
                        device,
                    )?,
                    key: linear(checkpoint, &format!("{p}.attention.self.key"), true, device)?,
                    value: linear(
                        checkpoint,
                        &format!("{p}.attention.self.value"),
                        true,
                        device,
                    )?,
                    attention_output: linear(
                        checkpoint,
                        &format!("{p}.attention.output.dense"),
                        true,
                        device,
                    )?,
                    attention_norm: norm(
                        checkpoint,
                        &format!("{p}.attention.output.LayerNorm"),
                        device,
                    )?,
                    intermediate: linear(
                        checkpoint,
                        &format!("{p}.intermediate.dense"),
                        true,
                        device,
                    )?,
                    output: linear(checkpoint, &format!("{p}.output.dense"), true, device)?,
                    output_norm: norm(checkpoint, &format!("{p}.output.LayerNorm"), device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            config: config.clone(),
            word_embeddings: tensor(checkpoint, "embeddings.word_embeddings.weight", device)?,
            position_embeddings: tensor(
                checkpoint,
                "embeddings.position_embeddings.weight",
                device,
            )?,
            token_type_embeddings: tensor(
                checkpoint,
                "embeddings.token_type_embeddings.weight",
                device,
            )?,
            embedding_norm: norm(checkpoint, "embeddings.LayerNorm", device)?,
            layers,
            isolate_segments: false,
            device: device.clone(),
        })
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.hidden_act.as_str() {
            "gelu" => x.gelu_erf()?,
            _ => x.gelu()?,
        })
    }
}

impl Backbone for Bert {
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, input: &ModelInput) -> Result<Tensor> {
        let (b, t) = input.input_ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(TrainerError::Input(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let h = self.config.hidden_size;
        let words = self
            .word_embeddings
            .index_select(&input.input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        // Isolated segments are each encoded as the base encodes a lone text: token
        // type 0 throughout.
        let types = if self.isolate_segments {
            self.token_type_embeddings.narrow(0, 0, 1)?.unsqueeze(0)?
        } else {
            self.token_type_embeddings
                .index_select(&input.token_type_ids.flatten_all()?, 0)?
                .reshape((b, t, h))?
        };
        let positions = if self.isolate_segments {
            let ids = segment_positions(&passage_segment_starts(&input.layout), t, &self.device)?;
            self.position_embeddings
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, h))?
        } else {
            self.position_embeddings.narrow(0, 0, t)?.unsqueeze(0)?
        };
        let sum = words.broadcast_add(&types)?.broadcast_add(&positions)?;
        layer_norm(
            &sum,
            &self.embedding_norm.weight,
            &self.embedding_norm.bias,
            self.config.layer_norm_eps,
        )
    }

    fn layer(
        &self,
        index: usize,
        hidden: &Tensor,
        layout: &RowLayout,
        want_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let l = &self.layers[index];
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.hidden_size / heads;
        let q = split_heads(&l.query.forward(hidden)?, heads, head_dim)?;
        let k = split_heads(&l.key.forward(hidden)?, heads, head_dim)?;
        let v = split_heads(&l.value.forward(hidden)?, heads, head_dim)?;
        let mask = if self.isolate_segments {
            let starts = passage_segment_starts(layout);
            segment_mask(&layout.lengths, &starts, layout.seq_len, &self.device)?
        } else {
            padding_mask(&layout.lengths, layout.seq_len, &self.device)?
        };
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(&mask)?;
        let probs = softmax_last(&scores)?;
        let attention = if want_attention {
            Some(scoring_attention(&probs, &layout.score_pos)?)
        } else {
            None
        };
        let context = merge_heads(&probs.matmul(&v)?)?;
        let attended = l.attention_output.forward(&context)?;
        let eps = self.config.layer_norm_eps;
        let x = layer_norm(
            &(attended + hidden)?,
            &l.attention_norm.weight,
            &l.attention_norm.bias,
            eps,
        )?;
        let inner = self.activation(&l.intermediate.forward(&x)?)?;
        let out = l.output.forward(&inner)?;
        let y = layer_norm(&(out + x)?, &l.output_norm.weight, &l.output_norm.bias, eps)?;
        Ok((y, attention))
    }

    fn projections_mut(&mut self) -> Vec<(usize, &'static str, &mut Linear)> {
        super::layer_projections(&mut self.layers)
    }

    fn readout(
        &self,
        hidden: &Tensor,
        layout: &RowLayout,
        readout: Readout,
        query_weights: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        readout.features(hidden, layout, query_weights)
    }

    fn isolate_segments(&mut self, on: bool) -> Result<()> {
        self.isolate_segments = on;
        Ok(())
    }
}

impl LoraTargets for BertLayer {
    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("q", &mut self.query),
            ("k", &mut self.key),
            ("v", &mut self.value),
            ("o", &mut self.attention_output),
            ("up", &mut self.intermediate),
            ("down", &mut self.output),
        ]
    }
}
