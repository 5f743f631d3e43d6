//! Numeric precision of an exported configuration, and the configuration itself: a
//! sub-structure (what is computed) at a precision (how), on passages of at most some
//! number of tokens (how much input).
//!
//! `int8` is a second axis of cost next to depth and width: the projections of every
//! layer (attention in, attention out, MLP up and down) run as 8-bit integer matrix
//! products, with weights quantized per output column at export and activations per
//! batch at run time (ONNX Runtime's dynamic quantization kernels). Embeddings, norms,
//! attention scores, adapters and heads stay f32. Only ONNX graphs have this axis; the
//! trainer's candle forward is f32 only. Ids append `-int8`: `full-int8`, `d4-r2@2-int8`.
//!
//! A passage cap is a third axis: the passage keeps only its first `N` tokens before
//! the sub-structure runs (the width of layer 0, where merging sets the width of later
//! layers). It changes no graph, only the pairs a graph is given, so a capped
//! configuration runs its uncapped twin's graph. Ids put `-p<N>` before any `-int8`:
//! `full-p64`, `full-p64-int8`, `d4-r2@2-p96`.

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

/// The id marker of a passage cap: `-p64` keeps a passage's first 64 tokens.
pub const PASSAGE_CAP_MARKER: &str = "-p";

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// One served configuration: a sub-structure at a precision, on passages of at most
/// `passage_tokens` tokens (all of them when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Configuration {
    pub sub: SubStructure,
    pub precision: Precision,
    pub passage_tokens: Option<usize>,
}

impl Configuration {
    pub fn f32(sub: SubStructure) -> Self {
        Configuration {
            sub,
            precision: Precision::F32,
            passage_tokens: None,
        }
    }

    pub fn int8(sub: SubStructure) -> Self {
        Configuration {
            sub,
            precision: Precision::Int8,
            passage_tokens: None,
        }
    }

    /// The same configuration on passages cut to their first `tokens` tokens.
    pub fn with_passage_tokens(self, tokens: usize) -> Self {
        Configuration {
            passage_tokens: Some(tokens),
            ..self
        }
    }

    /// Parses `<sub-structure id>[-p<N>][-int8]` and validates the sub-structure against
    /// a model with `num_layers` layers whose heads start at `min_depth`.
    pub fn parse(id: &str, num_layers: usize, min_depth: usize) -> Result<Self> {
        let id = id.trim();
        let whole = |e: ModelsError| match e {
            ModelsError::SubStructure { message, .. } => ModelsError::SubStructure {
                id: id.to_string(),
                message,
            },
            other => other,
        };
        let (rest, precision) = match id.strip_suffix(INT8_SUFFIX) {
            Some(rest) => (rest, Precision::Int8),
            None => (id, Precision::F32),
        };
        let (sub_id, passage_tokens) =
            split_passage_cap(rest).map_err(|message| ModelsError::SubStructure {
                id: id.to_string(),
                message,
            })?;
        let sub = SubStructure::parse(sub_id, num_layers, min_depth).map_err(whole)?;
        Ok(Configuration {
            sub,
            precision,
            passage_tokens,
        })
    }

    /// The id: the sub-structure's (`full` for the whole model), then `-p<N>` when the
    /// passage is capped, then `-int8` when quantized.
    pub fn id(&self, num_layers: usize) -> String {
        let mut id = self.graph_id(num_layers);
        if let Some(n) = self.passage_tokens {
            let at = id.strip_suffix(INT8_SUFFIX).map_or(id.len(), str::len);
            id.insert_str(at, &format!("{PASSAGE_CAP_MARKER}{n}"));
        }
        id
    }

    /// The id of the graph this configuration runs: its own id without the passage cap
    /// (a cap changes the inputs, not the graph).
    pub fn graph_id(&self, num_layers: usize) -> String {
        let base = self.sub.id(num_layers);
        match self.precision {
            Precision::F32 => base,
            Precision::Int8 => format!("{base}{INT8_SUFFIX}"),
        }
    }

    /// Token counts of a pair under this configuration: the passage cut to the cap.
    pub fn capped(&self, lengths: crate::flops::PairLengths) -> crate::flops::PairLengths {
        crate::flops::PairLengths {
            passage: self
                .passage_tokens
                .map_or(lengths.passage, |cap| lengths.passage.min(cap)),
            ..lengths
        }
    }
}

/// Splits a trailing `-p<N>` off a sub-structure id; `N` must be a positive number.
fn split_passage_cap(id: &str) -> std::result::Result<(&str, Option<usize>), String> {
    let Some(at) = id.rfind(PASSAGE_CAP_MARKER) else {
        return Ok((id, None));
    };
    let digits = &id[at + PASSAGE_CAP_MARKER.len()..];
    // `-p` only marks a cap when numbers follow; anything else is left to the
    // sub-structure parser, whose message lists the syntax.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((id, None));
    }
    let rest = &id[..at];
    if split_passage_cap(rest).is_ok_and(|(_, cap)| cap.is_some()) {
        return Err("names two passage caps; give one `-p<N>`".into());
    }
    match digits.parse::<usize>() {
        Ok(n) if n >= 1 => Ok((rest, Some(n))),
        Ok(_) => Err(format!(
            "passage cap `{PASSAGE_CAP_MARKER}{digits}` must keep at least one token"
        )),
        Err(_) => Err(format!(
            "passage cap `{PASSAGE_CAP_MARKER}{digits}` is not a token count this machine can hold"
        )),
    }
}

/// Adds the int8 twin of every f32 configuration that lacks one (`mrank export --int8`).
pub fn add_int8_twins(configs: &mut Vec<Configuration>) {
    let twins: Vec<Configuration> = configs
        .iter()
        .filter(|c| c.precision == Precision::F32)
        .map(|c| Configuration {
            precision: Precision::Int8,
            ..c.clone()
        })
        .filter(|t| !configs.contains(t))
        .collect();
    configs.extend(twins);
}

/// Adds a copy of every uncapped configuration capped at each of `caps` passage
/// tokens, where it is not there yet (`mrank export --passage-caps`).
pub fn add_passage_caps(configs: &mut Vec<Configuration>, caps: &[usize]) {
    let capped: Vec<Configuration> = configs
        .iter()
        .filter(|c| c.passage_tokens.is_none())
        .flat_map(|c| caps.iter().map(|&n| c.clone().with_passage_tokens(n)))
        .collect();
    for c in capped {
        if !configs.contains(&c) {
            configs.push(c);
        }
    }
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
    fn passage_caps_round_trip_before_int8() {
        for id in ["full-p64", "full-p64-int8", "d4-r2@2-p96", "d2-p8-int8"] {
            let c = Configuration::parse(id, 6, 2).unwrap();
            assert_eq!(c.id(6), id);
            assert!(c.passage_tokens.is_some());
        }
        let c = Configuration::parse("d6-r2@3-p48-int8", 6, 2).unwrap();
        assert_eq!(c.passage_tokens, Some(48));
        assert_eq!(c.sub, SubStructure::parse("d6-r2@3", 6, 2).unwrap());
        assert_eq!(c.precision, Precision::Int8);
        assert_eq!(c.graph_id(6), "d6-r2@3-int8");
        assert_eq!(
            Configuration::parse("full", 6, 2).unwrap().graph_id(6),
            "full"
        );
        let lengths = crate::flops::PairLengths {
            prefix: 10,
            passage: 100,
            suffix: 1,
        };
        assert_eq!(c.capped(lengths).passage, 48);
        let short = crate::flops::PairLengths {
            passage: 20,
            ..lengths
        };
        assert_eq!(c.capped(short), short);
    }

    #[test]
    fn passage_caps_copy_each_uncapped_configuration_once() {
        let mut configs: Vec<Configuration> = ["full", "full-int8", "d2-p32"]
            .iter()
            .map(|id| Configuration::parse(id, 6, 2).unwrap())
            .collect();
        add_passage_caps(&mut configs, &[32, 64, 32]);
        let ids: Vec<String> = configs.iter().map(|c| c.id(6)).collect();
        assert_eq!(
            ids,
            [
                "full",
                "full-int8",
                "d2-p32",
                "full-p32",
                "full-p64",
                "full-p32-int8",
                "full-p64-int8"
            ]
            .map(String::from)
        );
    }

    #[test]
    fn bad_passage_caps_name_the_whole_id() {
        let err = Configuration::parse("full-p0", 6, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("full-p0") && err.contains("at least one"),
            "{err}"
        );
        // A cap after `-int8` is not the syntax; the message shows what is.
        let err = Configuration::parse("full-int8-p64", 6, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("full-int8-p64"), "{err}");
        assert!(Configuration::parse("d1-p64", 6, 2).is_err());
        assert!(Configuration::parse("full-px", 6, 2).is_err());
        let err = Configuration::parse("d4-p64-p32", 6, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("two passage caps"), "{err}");
        let err = Configuration::parse("full-p99999999999999999999", 6, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a token count"), "{err}");
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
