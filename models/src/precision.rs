//! Numeric precision of an exported configuration, and the configuration itself: a
//! sub-structure (what is computed) at a precision (how).
//!
//! `int8` is a second axis of cost next to depth and width: the projections of every
//! layer (attention in, attention out, MLP up and down) run as 8-bit integer matrix
//! products, with weights quantized per output column at export and activations per
//! batch at run time (ONNX Runtime's dynamic quantization kernels). Embeddings, norms,
//! attention scores, adapters and heads stay f32. Only ONNX graphs have this axis; the
//! trainer's candle forward is f32 only. Ids append `-int8`: `full-int8`, `d4-r2@2-int8`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelsError, Result};
use crate::substructure::SubStructure;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Int8,
}

/// The id suffix of int8 configurations.
pub const INT8_SUFFIX: &str = "-int8";

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// One exported graph: a sub-structure at a precision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Configuration {
    pub sub: SubStructure,
    pub precision: Precision,
}

impl Configuration {
    pub fn f32(sub: SubStructure) -> Self {
        Configuration {
            sub,
            precision: Precision::F32,
        }
    }

    pub fn int8(sub: SubStructure) -> Self {
        Configuration {
            sub,
            precision: Precision::Int8,
        }
    }

    /// Parses `<sub-structure id>[-int8]` and validates the sub-structure against a
    /// model with `num_layers` layers whose heads start at `min_depth`.
    pub fn parse(id: &str, num_layers: usize, min_depth: usize) -> Result<Self> {
        let id = id.trim();
        match id.strip_suffix(INT8_SUFFIX) {
            Some(sub) => SubStructure::parse(sub, num_layers, min_depth)
                .map(Configuration::int8)
                .map_err(|e| match e {
                    ModelsError::SubStructure { message, .. } => ModelsError::SubStructure {
                        id: id.to_string(),
                        message,
                    },
                    other => other,
                }),
            None => SubStructure::parse(id, num_layers, min_depth).map(Configuration::f32),
        }
    }

    /// The id: the sub-structure's (`full` for the whole model) plus `-int8` when
    /// quantized.
    pub fn id(&self, num_layers: usize) -> String {
        let base = self.sub.id(num_layers);
        match self.precision {
            Precision::F32 => base,
            Precision::Int8 => format!("{base}{INT8_SUFFIX}"),
        }
    }
}

/// Adds the int8 twin of every f32 configuration that lacks one (`mrank export --int8`).
pub fn add_int8_twins(configs: &mut Vec<Configuration>) {
    let twins: Vec<Configuration> = configs
        .iter()
        .filter(|c| c.precision == Precision::F32)
        .map(|c| Configuration::int8(c.sub.clone()))
        .filter(|t| !configs.contains(t))
        .collect();
    configs.extend(twins);
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_with_and_without_int8() {
        for id in [
            "full",
            "d4",
            "d4-r2@2",
            "full-int8",
            "d2-int8",
            "d6-r4@1,3-int8",
        ] {
            let c = Configuration::parse(id, 6, 2).unwrap();
            assert_eq!(c.id(6), id);
            assert_eq!(c.precision == Precision::Int8, id.ends_with("-int8"));
        }
        assert_eq!(
            Configuration::parse("d6-int8", 6, 2).unwrap().id(6),
            "full-int8"
        );
    }

    #[test]
    fn bad_int8_ids_name_the_whole_id() {
        let err = Configuration::parse("d1-int8", 6, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d1-int8") && err.contains("depth 1"), "{err}");
        assert!(Configuration::parse("full-int4", 6, 2).is_err());
        assert!(Configuration::parse("-int8", 6, 2).is_err());
    }
}
