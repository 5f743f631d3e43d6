//! Errors of the trainer crate: checkpoint problems come from `models`, tensor problems
//! from candle, and input problems are ours.

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error(transparent)]
    Models(#[from] models::ModelsError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;
