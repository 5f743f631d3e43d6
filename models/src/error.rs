//! One error type for the `models` crate. Every variant names the file (or input) that
//! failed and says what was wrong with it, because these errors end up in front of a user
//! who pointed mrank at a checkpoint directory.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("{path}: {source} (is this a Hugging Face checkpoint directory?)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing; a checkpoint directory needs config.json, model.safetensors (or model.safetensors.index.json with its shards) and tokenizer.json")]
    MissingFile { path: PathBuf },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unknown architecture {architecture:?}; mrank supports {supported}")]
    UnknownArchitecture {
        path: PathBuf,
        architecture: String,
        supported: &'static str,
    },
    #[error("{path}: not a valid safetensors file ({message}); the file may be truncated or corrupt, download it again")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor {name:?} has shape {actual:?}, but config.json implies {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{dir}: tensor {name:?} not found in any safetensors file of the checkpoint")]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{path}: tensor {name:?} has dtype {dtype}; mrank reads F32, F16 and BF16")]
    TensorDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("invalid sub-structure {id:?}: {message}")]
    SubStructure { id: String, message: String },
    #[error("encoding failed: {0}")]
    Encoding(String),
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// ONNX Runtime could not be loaded or could not run a graph.
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T, E = ModelsError> = std::result::Result<T, E>;

impl ModelsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelsError::MissingFile { path }
        } else {
            ModelsError::Io { path, source }
        }
    }
}
