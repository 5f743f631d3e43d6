//! Errors of the export crate: checkpoint and adapter problems come from `models` and
//! `trainer`, file problems name the path.

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Models(#[from] models::ModelsError),
    #[error(transparent)]
    Trainer(#[from] trainer::TrainerError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;
