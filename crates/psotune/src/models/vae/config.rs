//! `vae/config.json` of a diffusers `AutoencoderKL` (diffusers
//! `models/autoencoders/autoencoder_kl.py`, `AutoencoderKL.__init__`).
//! Defaults are diffusers' own, so older configs that predate a key still
//! load; keys we do not know are ignored (`_class_name`, `_diffusers_version`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{read_json, Error, Result};

/// `sample_size` is an int in SD/SDXL configs, `[h, w]` in a few others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "down_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "up_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "sample_size")]
    pub sample_size: SampleSize,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    /// SD3/Flux-style VAEs shift before scaling; `null` (SD, SDXL) means 0.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics (Playground, SDXL variants). The
    /// pipelines that use them normalise differently, so a config that sets
    /// them is refused rather than silently mis-scaled.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn groups() -> usize {
    32
}
fn channels() -> Vec<usize> {
    vec![64]
}
fn down_types() -> Vec<String> {
    vec![DOWN_BLOCK.to_string()]
}
fn up_types() -> Vec<String> {
    vec![UP_BLOCK.to_string()]
}
fn silu() -> String {
    "silu".to_string()
}
fn sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

const DOWN_BLOCK: &str = "DownEncoderBlock2D";
const UP_BLOCK: &str = "UpDecoderBlock2D";

impl Default for VaeConfig {
    /// diffusers' `AutoencoderKL()` defaults.
    fn default() -> Self {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: down_types(),
            up_block_types: up_types(),
            block_out_channels: channels(),
            layers_per_block: 1,
            act_fn: silu(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: sample_size(),
            scaling_factor: scaling(),
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// Read and check `vae/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: VaeConfig = read_json(path)?;
        cfg.check().map_err(|(key, msg)| Error::config(path, format!("key `{key}`: {msg}")))?;
        Ok(cfg)
    }

    /// Image pixels per latent pixel along each side: one 2x downsampler per
    /// block but the last.
    pub fn downsampling_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// `shift_factor` with diffusers' `None` read as 0.
    pub fn shift(&self) -> f64 {
        self.shift_factor.unwrap_or(0.0)
    }

    /// Everything this implementation cannot build, as (key, reason).
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(("block_out_channels", "must not be empty".into()));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if let Some(c) = self.block_out_channels.iter().find(|c| **c == 0 || **c % self.norm_num_groups != 0) {
            return Err((
                "block_out_channels",
                format!("{c} channels cannot be split into norm_num_groups = {} groups", self.norm_num_groups),
            ));
        }
        for (key, types, want) in
            [("down_block_types", &self.down_block_types, DOWN_BLOCK), ("up_block_types", &self.up_block_types, UP_BLOCK)]
        {
            if types.len() != n {
                return Err((key, format!("has {} entries but block_out_channels has {n}", types.len())));
            }
            if let Some(t) = types.iter().find(|t| t.as_str() != want) {
                return Err((key, format!("unsupported block type {t:?} (only {want:?})")));
            }
        }
        // diffusers' `get_activation` maps both names to nn.SiLU.
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(("act_fn", format!("unsupported activation {:?} (only \"silu\")", self.act_fn)));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(("scaling_factor", format!("must be finite and non-zero, got {}", self.scaling_factor)));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err(("shift_factor", "must be finite or null".into()));
        }
        if self.latents_mean.is_some() {
            return Err(("latents_mean", "per-channel latent statistics are not supported (must be null)".into()));
        }
        if self.latents_std.is_some() {
            return Err(("latents_std", "per-channel latent statistics are not supported (must be null)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &str, text: &str) -> crate::scratch::ScratchFile {
        crate::scratch::ScratchFile::new(&format!("psotune-vae-config-{dir}"), "config.json", text).unwrap()
    }

    const SD21: &str = r#"{
      "_class_name": "AutoencoderKL", "_diffusers_version": "0.8.0",
      "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
      "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
      "out_channels": 3, "sample_size": 768,
      "up_block_types": ["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"]
    }"#;

    #[test]
    fn sd21_config_gets_diffusers_defaults() {
        let cfg = VaeConfig::from_file(write("sd21", SD21)).unwrap();
        assert_eq!(cfg.block_out_channels, vec![128, 256, 512, 512]);
        assert_eq!(cfg.downsampling_factor(), 8);
        assert_eq!(cfg.scaling_factor, 0.18215);
        assert_eq!(cfg.shift_factor, None);
        assert_eq!(cfg.shift(), 0.0);
        assert_eq!(cfg.sample_size, SampleSize::Square(768));
        assert!(cfg.mid_block_add_attention && cfg.use_quant_conv && cfg.use_post_quant_conv && cfg.force_upcast);
    }

    #[test]
    fn shift_factor_and_pair_sample_size_parse() {
        let text = SD21.replace("\"sample_size\": 768", "\"sample_size\": [64, 96], \"shift_factor\": 0.0609, \"scaling_factor\": 1.5305, \"mid_block_add_attention\": false");
        let cfg = VaeConfig::from_file(write("sd3", &text)).unwrap();
        assert_eq!(cfg.shift_factor, Some(0.0609));
        assert_eq!(cfg.scaling_factor, 1.5305);
        assert_eq!(cfg.sample_size, SampleSize::HeightWidth([64, 96]));
        assert!(!cfg.mid_block_add_attention);
    }

    #[test]
    fn unsupported_values_name_file_and_key() {
        let cases = [
            ("act", SD21.replace("\"silu\"", "\"gelu\""), "act_fn"),
            ("down", SD21.replacen("DownEncoderBlock2D", "AttnDownEncoderBlock2D", 1), "down_block_types"),
            ("up", SD21.replace(r#""UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D""#, r#""UpDecoderBlock2D""#), "up_block_types"),
            ("groups", SD21.replace("\"norm_num_groups\": 32", "\"norm_num_groups\": 48"), "block_out_channels"),
            ("mean", SD21.replace("\"in_channels\": 3", "\"in_channels\": 3, \"latents_mean\": [0.1, 0.2, 0.3, 0.4]"), "latents_mean"),
        ];
        for (name, text, key) in cases {
            let path = write(name, &text);
            let err = VaeConfig::from_file(&path).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{name}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{key}`")) && msg.contains(&path.display().to_string()), "{name}: {msg}");
        }
    }

    #[test]
    fn missing_file_is_an_io_error_with_the_path() {
        let err = VaeConfig::from_file("/nonexistent/vae/config.json").unwrap_err();
        assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/vae/config.json"));
    }
}
