//! Sub-structures: a (depth, width) cut of the model, and its id syntax.
//!
//! `d{depth}` keeps every token and runs `depth` layers; `d{depth}-r{ratio}@{l1},{l2}`
//! also merges passage tokens in groups of `ratio` before each listed layer runs (layer
//! `l` = after `l` layers have been computed, so `1 <= l < depth`); `full` is all layers
//! at ratio 1. The same ids are used by the CLI, the API, the manifest and metrics.

use std::fmt;

use crate::error::{ModelsError, Result};

/// Compression ratios the merge supports (groups of consecutive passage tokens).
pub const RATIOS: [usize; 4] = [1, 2, 4, 8];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubStructure {
    /// Number of layers run; the score comes from the head of layer `depth`.
    pub depth: usize,
    /// Passage tokens merged per group (1 = no merging).
    pub ratio: usize,
    /// Layers before which passage tokens are merged, ascending.
    pub compress_layers: Vec<usize>,
}

impl SubStructure {
    /// The whole model: every layer, no merging.
    pub fn full(num_layers: usize) -> Self {
        SubStructure {
            depth: num_layers,
            ratio: 1,
            compress_layers: Vec::new(),
        }
    }

    pub fn depth_only(depth: usize) -> Self {
        SubStructure {
            depth,
            ratio: 1,
            compress_layers: Vec::new(),
        }
    }

    pub fn is_full(&self, num_layers: usize) -> bool {
        self.depth == num_layers && self.ratio == 1
    }

    /// Parses an id and validates it against a model with `num_layers` layers whose
    /// heads start at `min_depth`.
    pub fn parse(id: &str, num_layers: usize, min_depth: usize) -> Result<Self> {
        let s = if id.trim() == "full" {
            SubStructure::full(num_layers)
        } else {
            Self::parse_syntax(id)?
        };
        s.validate(num_layers, min_depth)
            .map_err(|message| ModelsError::SubStructure {
                id: id.to_string(),
                message,
            })?;
        Ok(s)
    }

    /// Parses the `d..`/`d..-r..@..` syntax without checking it against a model.
    pub fn parse_syntax(id: &str) -> Result<Self> {
        let err = |message: &str| {
            ModelsError::SubStructure {
            id: id.to_string(),
            message: format!("{message}; expected `full`, `d<depth>` or `d<depth>-r<ratio>@<layer>[,<layer>...]`, e.g. `d4-r2@2`, each optionally followed by `-p<N>` (passage cut to N tokens) and then `-int8`"),
        }
        };
        let id = id.trim();
        let rest = id
            .strip_prefix('d')
            .ok_or_else(|| err("does not start with `d`"))?;
        let (depth_text, width) = match rest.split_once('-') {
            Some((d, w)) => (d, Some(w)),
            None => (rest, None),
        };
        let depth: usize = depth_text
            .parse()
            .map_err(|_| err("depth is not a number"))?;
        let Some(width) = width else {
            return Ok(SubStructure::depth_only(depth));
        };
        let width = width
            .strip_prefix('r')
            .ok_or_else(|| err("width part does not start with `r`"))?;
        let (ratio_text, layers_text) = width
            .split_once('@')
            .ok_or_else(|| err("width part needs `@<layers>`"))?;
        let ratio: usize = ratio_text
            .parse()
            .map_err(|_| err("ratio is not a number"))?;
        let compress_layers = layers_text
            .split(',')
            .map(|l| {
                l.parse::<usize>()
                    .map_err(|_| err("compress layer is not a number"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SubStructure {
            depth,
            ratio,
            compress_layers,
        })
    }

    /// Checks the sub-structure against a model; the message says what is out of range.
    pub fn validate(&self, num_layers: usize, min_depth: usize) -> std::result::Result<(), String> {
        if self.depth < min_depth || self.depth > num_layers {
            return Err(format!(
                "depth {} is outside {min_depth}..={num_layers} (the layers that have scoring heads)",
                self.depth
            ));
        }
        if !RATIOS.contains(&self.ratio) {
            return Err(format!("ratio {} is not one of {RATIOS:?}", self.ratio));
        }
        if self.ratio == 1 && !self.compress_layers.is_empty() {
            return Err("ratio 1 merges nothing; drop the compress layers".into());
        }
        if self.ratio > 1 && self.compress_layers.is_empty() {
            return Err(format!(
                "ratio {} needs at least one compress layer",
                self.ratio
            ));
        }
        if !self.compress_layers.windows(2).all(|w| w[0] < w[1]) {
            return Err("compress layers must be strictly ascending".into());
        }
        for &l in &self.compress_layers {
            if l < 1 || l >= self.depth {
                return Err(format!(
                    "compress layer {l} must be in 1..{} (merging happens after at least one layer and before the last one computed)",
                    self.depth
                ));
            }
        }
        Ok(())
    }

    /// The id, with `full` for the whole model.
    pub fn id(&self, num_layers: usize) -> String {
        if self.is_full(num_layers) {
            "full".to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for SubStructure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.depth)?;
        if self.ratio > 1 {
            let layers: Vec<String> = self.compress_layers.iter().map(|l| l.to_string()).collect();
            write!(f, "-r{}@{}", self.ratio, layers.join(","))?;
        }
        Ok(())
    }
}

/// The set of sub-structures a model is trained and served with.
#[derive(Debug, Clone, PartialEq)]
pub struct SubStructureSpace {
    pub num_layers: usize,
    /// Shallowest layer with a scoring head.
    pub min_depth: usize,
    /// Ratios other than 1 that width may use.
    pub ratios: Vec<usize>,
    /// Layers that may be listed as compress layers (single-layer compression in the
    /// enumeration; ids with several layers are still valid everywhere).
    pub compress_layers: Vec<usize>,
}

impl SubStructureSpace {
    /// Default space: heads from a quarter of the depth up (the paper starts Mistral-7B's
    /// 32 layers at 4 and Gemma2's 42 at 8; a quarter keeps the shallowest exits useful
    /// on small models), ratios 2/4/8, and compression at any layer for models of up to
    /// 12 layers or at every eighth of the depth beyond.
    pub fn default_for(num_layers: usize) -> Self {
        let min_depth = num_layers.div_ceil(4).max(1);
        let compress_layers = if num_layers <= 12 {
            (1..num_layers).collect()
        } else {
            let step = num_layers.div_ceil(8);
            (1..num_layers).filter(|l| l % step == 0).collect()
        };
        SubStructureSpace {
            num_layers,
            min_depth,
            ratios: vec![2, 4, 8],
            compress_layers,
        }
    }

    /// Every sub-structure of the space: each depth without merging, and each depth with
    /// each ratio at each single compress layer below it.
    pub fn enumerate(&self) -> Vec<SubStructure> {
        let mut out = Vec::new();
        for depth in self.min_depth..=self.num_layers {
            out.push(SubStructure::depth_only(depth));
            for &ratio in &self.ratios {
                for &layer in self
                    .compress_layers
                    .iter()
                    .filter(|&&l| l >= 1 && l < depth)
                {
                    out.push(SubStructure {
                        depth,
                        ratio,
                        compress_layers: vec![layer],
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in ["d4", "d4-r2@2", "d6-r8@1,3,5"] {
            let s = SubStructure::parse(id, 6, 1).unwrap();
            assert_eq!(s.to_string(), id);
        }
        let full = SubStructure::parse("full", 6, 1).unwrap();
        assert_eq!(full, SubStructure::full(6));
        assert_eq!(full.id(6), "full");
        assert_eq!(SubStructure::parse("d6", 6, 1).unwrap().id(6), "full");
    }

    #[test]
    fn invalid_ids_name_the_problem() {
        let cases = [
            ("x4", "does not start"),
            ("d9", "outside"),
            ("d1", "outside"),
            ("d4-r3@2", "ratio 3"),
            ("d4-r2@4", "compress layer 4"),
            ("d4-r2@0", "compress layer 0"),
            ("d4-r2@2,1", "ascending"),
            ("d4-r2", "needs `@"),
            ("d4-r2@a", "not a number"),
        ];
        for (id, needle) in cases {
            let err = SubStructure::parse(id, 6, 2).unwrap_err().to_string();
            assert!(err.contains(needle), "{id}: {err}");
        }
    }

    #[test]
    fn default_space() {
        let space = SubStructureSpace::default_for(6);
        assert_eq!(space.min_depth, 2);
        let all = space.enumerate();
        assert!(all.contains(&SubStructure::full(6)));
        assert!(all.iter().all(|s| s.validate(6, 2).is_ok()));
        // depths 2..=6, each with 1 + 3 * (depth - 1) configurations.
        assert_eq!(all.len(), (2..=6).map(|d| 1 + 3 * (d - 1)).sum::<usize>());
    }
}
