//! Model families: the typed contents of a checkpoint's `config.json`, one file per family.
//!
//! A family decides three things: which tensors the checkpoint must hold (and their
//! shapes), how a (query, passage) pair becomes tokens (see `encoding`), and where the
//! score is read. The math itself lives in the trainer (candle) and the export (ONNX).

pub mod bert;
pub mod gemma2;
pub mod llama;

use std::path::Path;

use crate::error::{ModelsError, Result};

pub use bert::BertConfig;
pub use gemma2::Gemma2Config;
pub use llama::LlamaConfig;

/// The `architectures` values mrank accepts, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str = "BertModel, BertForSequenceClassification, \
LlamaForCausalLM, LlamaModel, MistralForCausalLM, MistralModel, Qwen2ForCausalLM, Qwen2Model, \
Gemma2ForCausalLM, Gemma2Model";

/// Which implementation runs a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Encoder cross-encoder: `[CLS] query [SEP] passage [SEP]`, scored at `[CLS]`.
    Bert,
    /// Decoders with RMSNorm, RoPE and SwiGLU: Llama, Mistral, Qwen2.
    Llama,
    /// Gemma 2: GeGLU, sandwich norms, soft-capping, alternating sliding window.
    Gemma2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Llama => "llama",
            Family::Gemma2 => "gemma2",
        }
    }

    /// Decoders read the score at the last real token and use the prompt template.
    pub fn is_decoder(self) -> bool {
        !matches!(self, Family::Bert)
    }
}

/// Shape facts every family shares; what FLOP estimates and shape checks need.
#[derive(Debug, Clone, PartialEq)]
pub struct Dimensions {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    /// Gated MLPs (SwiGLU, GeGLU) have three projections; BERT's has two.
    pub gated_mlp: bool,
}

/// A parsed `config.json`.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    Bert(BertConfig),
    Llama(LlamaConfig),
    Gemma2(Gemma2Config),
}

impl ModelConfig {
    /// Parses `config.json`, dispatching on `architectures` (or `model_type` when absent).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelsError::io(path, e))?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ModelsError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let architecture = match value.get("architectures").and_then(|a| a.as_array()) {
            Some(list) => match list.first().and_then(|a| a.as_str()) {
                Some(a) => a.to_string(),
                None => {
                    return Err(ModelsError::Config {
                        path: path.to_path_buf(),
                        message: "\"architectures\" is empty or not a list of strings".into(),
                    })
                }
            },
            None => match value.get("model_type").and_then(|m| m.as_str()) {
                Some(m) => m.to_string(),
                None => {
                    return Err(ModelsError::Config {
                        path: path.to_path_buf(),
                        message: "neither \"architectures\" nor \"model_type\" is set".into(),
                    })
                }
            },
        };
        let de_err = |source: serde_json::Error| ModelsError::Json {
            path: path.to_path_buf(),
            source,
        };
        let config = match architecture.as_str() {
            "BertModel" | "BertForSequenceClassification" | "bert" => {
                ModelConfig::Bert(serde_json::from_value(value.clone()).map_err(de_err)?)
            }
            "LlamaForCausalLM" | "LlamaModel" | "llama" | "MistralForCausalLM" | "MistralModel"
            | "mistral" | "Qwen2ForCausalLM" | "Qwen2Model" | "qwen2" => {
                let mut c: LlamaConfig = serde_json::from_value(value.clone()).map_err(de_err)?;
                c.variant = llama::Variant::from_architecture(&architecture);
                ModelConfig::Llama(c)
            }
            "Gemma2ForCausalLM" | "Gemma2Model" | "gemma2" => {
                ModelConfig::Gemma2(serde_json::from_value(value.clone()).map_err(de_err)?)
            }
            other => {
                return Err(ModelsError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    architecture: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES,
                })
            }
        };
        config.check().map_err(|message| ModelsError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    pub fn family(&self) -> Family {
        match self {
            ModelConfig::Bert(_) => Family::Bert,
            ModelConfig::Llama(_) => Family::Llama,
            ModelConfig::Gemma2(_) => Family::Gemma2,
        }
    }

    pub fn dimensions(&self) -> Dimensions {
        match self {
            ModelConfig::Bert(c) => c.dimensions(),
            ModelConfig::Llama(c) => c.dimensions(),
            ModelConfig::Gemma2(c) => c.dimensions(),
        }
    }

    /// A human name for the architecture, e.g. "qwen2" for a Qwen2 checkpoint.
    pub fn variant_name(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Llama(c) => c.variant.name(),
            ModelConfig::Gemma2(_) => "gemma2",
        }
    }

    /// Every tensor the forward pass reads, with the shape `config.json` implies, under
    /// the checkpoint's naming (without any `bert.`/`model.` prefix resolution).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            ModelConfig::Bert(c) => c.expected_tensors(),
            ModelConfig::Llama(c) => c.expected_tensors(),
            ModelConfig::Gemma2(c) => c.expected_tensors(),
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        let d = self.dimensions();
        if d.num_layers == 0 || d.hidden_size == 0 || d.num_heads == 0 || d.vocab_size == 0 {
            return Err("num_hidden_layers, hidden_size, num_attention_heads and vocab_size must be positive".into());
        }
        if d.num_kv_heads == 0 || !d.num_heads.is_multiple_of(d.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                d.num_heads, d.num_kv_heads
            ));
        }
        if let ModelConfig::Bert(c) = self {
            if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
                return Err(format!(
                    "hidden_size ({}) is not a multiple of num_attention_heads ({})",
                    c.hidden_size, c.num_attention_heads
                ));
            }
        }
        Ok(())
    }
}
