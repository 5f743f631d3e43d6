//! The shared vocabulary of mrank: checkpoint loading, model families, pair encoding,
//! sub-structures and their id syntax, and FLOP estimates. Nothing here knows about
//! HTTP, queues or training.

pub mod checkpoint;
pub mod encoding;
pub mod error;
pub mod families;
pub mod flops;
pub mod manifest;
pub mod precision;
pub mod runtime;
pub mod stamp;
pub mod substructure;

pub use checkpoint::{Checkpoint, TensorF32};
pub use encoding::{EncodedPair, EncodedRequest, PaddedBatch, PairEncoder, Span};
pub use error::{ModelsError, Result};
pub use families::{Dimensions, Family, ModelConfig};
pub use flops::{pair_flops, PairLengths, Segments};
pub use manifest::{ConfigEntry, Manifest};
pub use precision::{Configuration, Precision};
pub use runtime::Runtime;
pub use stamp::content_hash;
pub use substructure::{SubStructure, SubStructureSpace};
