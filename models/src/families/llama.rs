//! Llama-style decoders: Llama, Mistral and Qwen2 share one implementation (RMSNorm,
//! rotary positions with optional scaling, grouped-query attention, SwiGLU MLP). They
//! differ only in config fields: Qwen2 has q/k/v biases, Mistral a sliding window.

use serde::Deserialize;

use super::Dimensions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    #[default]
    Llama,
    Mistral,
    Qwen2,
}

impl Variant {
    pub fn from_architecture(arch: &str) -> Self {
        let a = arch.to_ascii_lowercase();
        if a.starts_with("mistral") {
            Variant::Mistral
        } else if a.starts_with("qwen2") {
            Variant::Qwen2
        } else {
            Variant::Llama
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Variant::Llama => "llama",
            Variant::Mistral => "mistral",
            Variant::Qwen2 => "qwen2",
        }
    }
}

/// `rope_scaling` as Hugging Face writes it (`type` in older configs, `rope_type` in newer).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn default_rope_theta() -> f64 {
    10000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(skip)]
    pub variant: Variant,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's q/k/v/o bias switch; Qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2 writes `use_sliding_window: false` next to a window it does not use.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    /// Whether q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.variant == Variant::Qwen2 || self.attention_bias
    }
    /// Whether the output projection carries a bias (only Llama's `attention_bias`).
    pub fn o_bias(&self) -> bool {
        self.variant != Variant::Qwen2 && self.attention_bias
    }
    /// The sliding window in force, if any (Qwen2 only uses it when asked to).
    pub fn effective_sliding_window(&self) -> Option<usize> {
        match self.variant {
            Variant::Qwen2 if self.use_sliding_window != Some(true) => None,
            Variant::Llama => None,
            _ => self.sliding_window,
        }
    }

    pub fn dimensions(&self) -> Dimensions {
        Dimensions {
            num_layers: self.num_hidden_layers,
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            gated_mlp: true,
        }
    }

    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.num_kv_heads() * self.head_dim();
        let i = self.intermediate_size;
        let mut t = vec![
            (
                "model.embed_tokens.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.qkv_bias() {
                t.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                t.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                t.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            if self.o_bias() {
                t.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        t
    }
}
