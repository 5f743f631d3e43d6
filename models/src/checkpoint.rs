//! Loading a Hugging Face checkpoint directory: `config.json`, `model.safetensors` (or a
//! sharded `model.safetensors.index.json`) and `tokenizer.json`.
//!
//! Opening a checkpoint validates everything the forward pass will rely on, so that a
//! broken download fails here with the file and the problem named, not later with a
//! shape panic inside a matmul: every tensor the family needs must exist with the shape
//! `config.json` implies, and the tokenizer must fit the embedding table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tokenizers::Tokenizer;

use crate::error::{ModelsError, Result};
use crate::families::{Family, ModelConfig};

/// A tensor read out of a checkpoint, converted to f32, row-major.
#[derive(Debug, Clone)]
pub struct TensorF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
}

/// Where a tensor lives: file index and (dtype, shape) from the header.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// An opened, validated checkpoint directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    files: Vec<SafetensorsFile>,
    tensors: HashMap<String, TensorEntry>,
    /// Checkpoint name prefix that maps the family's canonical names to the stored ones
    /// (`bert.` for `BertForSequenceClassification`, `""` or `model.` handling for decoders).
    name_map: NameMap,
}

#[derive(Debug, Clone, Copy)]
enum NameMap {
    Identity,
    /// Stored names carry an extra prefix (`bert.`).
    AddPrefix(&'static str),
    /// Stored names lack the canonical `model.` prefix (`LlamaModel` checkpoints).
    StripModel,
}

impl NameMap {
    fn stored(self, canonical: &str) -> String {
        match self {
            NameMap::Identity => canonical.to_string(),
            NameMap::AddPrefix(p) => format!("{p}{canonical}"),
            NameMap::StripModel => canonical
                .strip_prefix("model.")
                .unwrap_or(canonical)
                .to_string(),
        }
    }
}

impl Checkpoint {
    /// Opens and validates `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(ModelsError::MissingFile { path: dir });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let files = open_safetensors(&dir)?;
        let mut tensors = HashMap::new();
        for (index, file) in files.iter().enumerate() {
            let st =
                SafeTensors::deserialize(&file.mmap).map_err(|e| ModelsError::Safetensors {
                    path: file.path.clone(),
                    message: e.to_string(),
                })?;
            for (name, view) in st.tensors() {
                tensors.insert(
                    name,
                    TensorEntry {
                        file: index,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                    },
                );
            }
        }
        let name_map = detect_name_map(&config, &tensors);
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), &config)?;
        let checkpoint = Checkpoint {
            dir,
            config,
            tokenizer,
            files,
            tensors,
            name_map,
        };
        checkpoint.validate_tensors()?;
        Ok(checkpoint)
    }

    pub fn family(&self) -> Family {
        self.config.family()
    }

    /// Whether the checkpoint stores a tensor under the family's canonical name.
    pub fn has_tensor(&self, canonical: &str) -> bool {
        self.tensors.contains_key(&self.name_map.stored(canonical))
    }

    /// Shape of a tensor by canonical name.
    pub fn tensor_shape(&self, canonical: &str) -> Option<&[usize]> {
        self.tensors
            .get(&self.name_map.stored(canonical))
            .map(|e| e.shape.as_slice())
    }

    /// Reads a tensor by its canonical name (e.g. `encoder.layer.0.attention.self.query.weight`)
    /// and converts it to f32.
    pub fn tensor(&self, canonical: &str) -> Result<TensorF32> {
        let stored = self.name_map.stored(canonical);
        let entry = self
            .tensors
            .get(&stored)
            .ok_or_else(|| ModelsError::MissingTensor {
                dir: self.dir.clone(),
                name: stored.clone(),
            })?;
        let file = &self.files[entry.file];
        let st = SafeTensors::deserialize(&file.mmap).map_err(|e| ModelsError::Safetensors {
            path: file.path.clone(),
            message: e.to_string(),
        })?;
        let view = st.tensor(&stored).map_err(|e| ModelsError::Safetensors {
            path: file.path.clone(),
            message: e.to_string(),
        })?;
        let bytes = view.data();
        let data = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(ModelsError::TensorDtype {
                    path: file.path.clone(),
                    name: stored,
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(TensorF32 {
            shape: entry.shape.clone(),
            data,
        })
    }

    /// A fingerprint of the weights: FNV-1a over every stored tensor's name, dtype,
    /// shape and the first and last 256 bytes of its data, in name order. Two checkpoints
    /// of one architecture and size (a base and a fine-tune of it, two bases) differ in
    /// it; reading a few hundred bytes per tensor keeps it cheap for any model size.
    /// Adapters record it, so they are never run on weights they were not trained on.
    pub fn fingerprint(&self) -> Result<String> {
        const SAMPLE: usize = 256;
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut buf = Vec::new();
        for name in names {
            let entry = &self.tensors[name];
            let file = &self.files[entry.file];
            let st =
                SafeTensors::deserialize(&file.mmap).map_err(|e| ModelsError::Safetensors {
                    path: file.path.clone(),
                    message: e.to_string(),
                })?;
            let data = st
                .tensor(name)
                .map_err(|e| ModelsError::Safetensors {
                    path: file.path.clone(),
                    message: e.to_string(),
                })?
                .data();
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(format!("{:?}{:?}", entry.dtype, entry.shape).as_bytes());
            buf.extend_from_slice(&data[..data.len().min(SAMPLE)]);
            buf.extend_from_slice(&data[data.len().saturating_sub(SAMPLE)..]);
        }
        Ok(format!("{:016x}", crate::stamp::content_hash(&buf)))
    }

    /// Names and shapes of every tensor stored, sorted by name (for `inspect`).
    pub fn stored_tensors(&self) -> BTreeMap<&str, &[usize]> {
        self.tensors
            .iter()
            .map(|(n, e)| (n.as_str(), e.shape.as_slice()))
            .collect()
    }

    fn validate_tensors(&self) -> Result<()> {
        for (canonical, expected) in self.config.expected_tensors() {
            let stored = self.name_map.stored(&canonical);
            let Some(entry) = self.tensors.get(&stored) else {
                return Err(ModelsError::MissingTensor {
                    dir: self.dir.clone(),
                    name: stored,
                });
            };
            if entry.shape != expected {
                return Err(ModelsError::TensorShape {
                    path: self.files[entry.file].path.clone(),
                    name: stored,
                    expected,
                    actual: entry.shape.clone(),
                });
            }
            if !matches!(entry.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(ModelsError::TensorDtype {
                    path: self.files[entry.file].path.clone(),
                    name: stored,
                    dtype: format!("{:?}", entry.dtype),
                });
            }
        }
        Ok(())
    }
}

fn open_safetensors(dir: &Path) -> Result<Vec<SafetensorsFile>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let paths: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelsError::io(&index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelsError::Json {
                path: index.clone(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelsError::Config {
                path: index.clone(),
                message: "no \"weight_map\" object".into(),
            })?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        return Err(ModelsError::MissingFile { path: single });
    };
    paths
        .into_iter()
        .map(|path| {
            let file = std::fs::File::open(&path).map_err(|e| ModelsError::io(&path, e))?;
            // SAFETY: the map is read-only and checkpoint files are not modified while
            // mrank runs; a concurrent truncation would be a user error on a model
            // directory, the same contract every safetensors loader has.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelsError::io(&path, e))?;
            Ok(SafetensorsFile { path, mmap })
        })
        .collect()
}

fn detect_name_map(config: &ModelConfig, tensors: &HashMap<String, TensorEntry>) -> NameMap {
    match config.family() {
        Family::Bert => {
            if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
                NameMap::AddPrefix("bert.")
            } else {
                NameMap::Identity
            }
        }
        Family::Llama | Family::Gemma2 => {
            if !tensors.contains_key("model.embed_tokens.weight")
                && tensors.contains_key("embed_tokens.weight")
            {
                NameMap::StripModel
            } else {
                NameMap::Identity
            }
        }
    }
}

pub fn load_tokenizer(path: &Path, config: &ModelConfig) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(ModelsError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| ModelsError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("cannot parse: {e}"),
    })?;
    // Shipped tokenizers often fix truncation and padding (MiniLM: 128); pair encoding
    // does its own truncation and the batcher its own padding.
    tokenizer
        .with_truncation(None)
        .map_err(|e| ModelsError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    tokenizer.with_padding(None);
    let vocab = config.dimensions().vocab_size;
    let max_id = tokenizer
        .get_vocab(true)
        .values()
        .copied()
        .max()
        .unwrap_or(0) as usize;
    if max_id >= vocab {
        return Err(ModelsError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "token id {max_id} is outside the model's embedding table (config.json vocab_size = {vocab}); this tokenizer belongs to another model"
            ),
        });
    }
    if config.family() == Family::Bert {
        for special in ["[CLS]", "[SEP]"] {
            if tokenizer.token_to_id(special).is_none() {
                return Err(ModelsError::Tokenizer {
                    path: path.to_path_buf(),
                    message: format!(
                        "no {special} token; a BERT cross-encoder needs [CLS] and [SEP]"
                    ),
                });
            }
        }
    }
    Ok(tokenizer)
}

/// IEEE half to single precision, exact for every input (normals, subnormals, inf, NaN).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24.
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
