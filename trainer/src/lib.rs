//! The trainer: candle implementations of each family with depth exits (per-layer
//! scoring heads), width merging and LoRA branches. Training (losses, loop, eval) builds
//! on this forward pass.

pub mod adapters;
pub mod biencoder;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod families;
pub mod forward;
pub mod idf;
pub mod layers;
pub mod linear;
pub mod merge;
pub mod metrics;
pub mod optim;
pub mod reranker;
pub mod train;

pub use error::{Result, TrainerError};
pub use families::load_backbone;
pub use forward::{forward, Backbone, ForwardOutput, Heads, ModelInput, Readout};
pub use merge::{MergeMode, RowLayout};
