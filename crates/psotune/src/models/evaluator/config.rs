//! `config.json` of an evaluator folder: the architecture and the class
//! names of both heads, so a folder is self-describing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{read_json, Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// Side of the square input images in pixels (inputs are RGB in [-1, 1]).
    pub image_size: usize,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Output channels of each resolution level; every level after the
    /// first halves the resolution. The last entry is the feature dimension.
    pub block_channels: Vec<usize>,
    /// Residual blocks per level.
    pub layers_per_block: usize,
    /// Groups of every GroupNorm (must divide every channel count).
    pub norm_num_groups: usize,
    /// Class names of the style head, in logit order.
    pub styles: Vec<String>,
    /// Class names of the category head (emoji subgroups), in logit order.
    pub categories: Vec<String>,
}

impl EvaluatorConfig {
    /// Read and check `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: EvaluatorConfig = read_json(path)?;
        cfg.check().map_err(|msg| Error::config(path, msg))?;
        Ok(cfg)
    }

    /// Length of the feature vector ([`super::Evaluator::features`]).
    pub fn feature_dim(&self) -> usize {
        self.block_channels.last().copied().unwrap_or(0)
    }

    /// Why this config cannot build a model, if it cannot.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.in_channels == 0 || self.layers_per_block == 0 || self.norm_num_groups == 0 {
            return Err("in_channels, layers_per_block and norm_num_groups must be positive".into());
        }
        if self.block_channels.is_empty() {
            return Err("block_channels is empty".into());
        }
        if let Some(c) = self.block_channels.iter().find(|c| **c == 0 || **c % self.norm_num_groups != 0) {
            return Err(format!("block_channels entry {c} is not a positive multiple of norm_num_groups {}", self.norm_num_groups));
        }
        let downsamples = self.block_channels.len() - 1;
        if self.image_size == 0 || !self.image_size.is_multiple_of(1 << downsamples) {
            return Err(format!("image_size {} is not divisible by 2^{downsamples} (one halving per level after the first)", self.image_size));
        }
        for (what, names) in [("styles", &self.styles), ("categories", &self.categories)] {
            if names.is_empty() {
                return Err(format!("{what} is empty"));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(format!("{what} lists `{dup}` twice"));
            }
        }
        Ok(())
    }
}
