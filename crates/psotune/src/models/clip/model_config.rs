//! transformers `CLIPVisionConfig` and the full `CLIPConfig` (the
//! `config.json` of a `CLIPModel` folder such as openai/clip-vit-large-patch14
//! or PickScore_v1). Defaults are those of `configuration_clip.py`
//! (transformers 5.24), so a config that omits a key builds what transformers
//! would build; unknown keys (dropout rates, initializer ranges, ...) are
//! ignored as transformers ignores them.

use std::path::Path;

use serde::Deserialize;

use super::config::{ClipActivation, ClipTextConfig};
use crate::error::{read_json, Error, Result};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d_num_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_num_heads")]
    pub num_attention_heads: usize,
    /// Always 3 for the CLIP checkpoints we score with; anything else is refused.
    #[serde(default = "d_num_channels")]
    pub num_channels: usize,
    /// Side of the square input the position table is sized for.
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    #[serde(default = "d_patch_size")]
    pub patch_size: usize,
    #[serde(default = "d_hidden_act")]
    pub hidden_act: ClipActivation,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn d_hidden_size() -> usize {
    768
}
fn d_intermediate_size() -> usize {
    3072
}
fn d_num_layers() -> usize {
    12
}
fn d_num_heads() -> usize {
    12
}
fn d_num_channels() -> usize {
    3
}
fn d_image_size() -> usize {
    224
}
fn d_patch_size() -> usize {
    32
}
fn d_hidden_act() -> ClipActivation {
    ClipActivation::QuickGelu
}
fn d_layer_norm_eps() -> f64 {
    1e-5
}
fn d_projection_dim() -> usize {
    512
}

impl ClipVisionConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        for (name, v) in sizes {
            if v == 0 {
                return Err(format!("vision_config.{name} must be positive"));
            }
        }
        if self.num_channels != 3 {
            return Err(format!("vision_config.num_channels is {}, only RGB (3) is supported", self.num_channels));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!("vision_config.image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!("vision_config.layer_norm_eps must be positive, got {}", self.layer_norm_eps));
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// The sizes `ClipEncoderLayer` reads, in the text config's type: the
    /// vision tower's layers are the same `CLIPEncoderLayer` class (only the
    /// mask differs, and that is a forward argument), so they are built by
    /// the same code rather than a copy of it.
    pub fn layer_config(&self) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 1,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            max_position_embeddings: self.grid() * self.grid() + 1,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            projection_dim: None,
            eos_token_id: 0,
            pad_token_id: None,
            bos_token_id: None,
            architectures: None,
        }
    }
}

/// `CLIPConfig`: both towers and the shared projection size.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// With `projection_dim` set to the model's (the text tower's own key is
    /// not what `CLIPModel` builds its `text_projection` from).
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    /// Output size of `text_projection` and `visual_projection`.
    pub projection_dim: usize,
}

impl ClipConfig {
    /// Read a `CLIPModel` `config.json`; errors name the file and the key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw: serde_json::Value = read_json(path)?;
        let bad = |msg: String| Error::config(path, msg);
        let (Some(text), Some(vision)) = (raw.get("text_config"), raw.get("vision_config")) else {
            return Err(bad("not a CLIPModel config: it needs both `text_config` and `vision_config`".into()));
        };
        let mut text_config: ClipTextConfig = serde_json::from_value(text.clone()).map_err(|e| bad(format!("text_config: {e}")))?;
        let vision_config: ClipVisionConfig = serde_json::from_value(vision.clone()).map_err(|e| bad(format!("vision_config: {e}")))?;
        let projection_dim = match raw.get("projection_dim") {
            None | Some(serde_json::Value::Null) => d_projection_dim(),
            Some(v) => v.as_u64().filter(|&p| p > 0).ok_or_else(|| bad(format!("projection_dim must be a positive integer, got {v}")))? as usize,
        };
        text_config.projection_dim = Some(projection_dim);
        text_config.validate().map_err(|m| bad(format!("text_config: {m}")))?;
        vision_config.validate().map_err(bad)?;
        Ok(Self { text_config, vision_config, projection_dim })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> crate::scratch::ScratchFile {
        crate::scratch::ScratchFile::new(&format!("psotune-clip-model-config-{name}"), "config.json", text).unwrap()
    }

    #[test]
    fn reads_a_clip_vit_l14_style_config_with_defaults() {
        let p = write(
            "l14",
            r#"{"architectures": ["CLIPModel"], "projection_dim": 768, "logit_scale_init_value": 2.6592,
                "text_config": {"hidden_size": 768, "num_attention_heads": 12, "projection_dim": 512, "eos_token_id": 2},
                "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                  "num_attention_heads": 16, "patch_size": 14, "dropout": 0.0}}"#,
        );
        let c = ClipConfig::from_file(&p).unwrap();
        assert_eq!(c.projection_dim, 768);
        // CLIPModel sizes text_projection by the top-level key.
        assert_eq!(c.text_config.projection_dim, Some(768));
        assert_eq!((c.vision_config.image_size, c.vision_config.grid()), (224, 16));
        assert_eq!(c.vision_config.hidden_act, ClipActivation::QuickGelu);
        assert_eq!(c.vision_config.layer_config().max_position_embeddings, 257);
    }

    #[test]
    fn bad_configs_name_the_file_and_key() {
        let p = write("text-only", r#"{"hidden_size": 8}"#);
        let msg = ClipConfig::from_file(&p).unwrap_err().to_string();
        assert!(msg.contains("config.json") && msg.contains("vision_config"), "{msg}");

        let p = write("patch", r#"{"text_config": {}, "vision_config": {"image_size": 30, "patch_size": 8}}"#);
        let msg = ClipConfig::from_file(&p).unwrap_err().to_string();
        assert!(msg.contains("image_size 30") && msg.contains("patch_size 8"), "{msg}");

        let p = write("act", r#"{"text_config": {}, "vision_config": {"hidden_act": "relu"}}"#);
        let msg = ClipConfig::from_file(&p).unwrap_err().to_string();
        assert!(msg.contains("vision_config") && msg.contains("relu"), "{msg}");

        let p = write("proj", r#"{"projection_dim": 0, "text_config": {}, "vision_config": {}}"#);
        assert!(ClipConfig::from_file(&p).unwrap_err().to_string().contains("projection_dim"));
    }
}
