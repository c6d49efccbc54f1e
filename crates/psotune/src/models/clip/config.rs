//! transformers `CLIPTextConfig`, read from a `text_encoder/config.json`.
//! Defaults are the ones `configuration_clip.py` (transformers 5.24) declares,
//! so a config that omits a key builds what transformers would build.

use std::path::Path;

use serde::Deserialize;

use crate::error::{read_json, Error, Result};

/// The MLP activation (`hidden_act`), as transformers' `ACT2FN` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClipActivation {
    /// OpenAI CLIP (SD1.x text encoder, SDXL's first encoder): x * sigmoid(1.702 x).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact erf GELU (OpenCLIP ViT-H / bigG: SD2.x, SDXL's second encoder).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation (`NewGELUActivation`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_hidden_act")]
    pub hidden_act: ClipActivation,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Output size of `text_projection` (only used by `CLIPTextModelWithProjection`).
    #[serde(default = "d_projection_dim")]
    pub projection_dim: Option<usize>,
    /// Picks the pooled position: see [`super::ClipTextModel::forward`].
    #[serde(default = "d_eos_token_id", deserialize_with = "token_id")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
}

fn d_vocab_size() -> usize {
    49408
}
fn d_hidden_size() -> usize {
    512
}
fn d_intermediate_size() -> usize {
    2048
}
fn d_num_hidden_layers() -> usize {
    12
}
fn d_num_attention_heads() -> usize {
    8
}
fn d_max_position_embeddings() -> usize {
    77
}
fn d_hidden_act() -> ClipActivation {
    ClipActivation::QuickGelu
}
fn d_layer_norm_eps() -> f64 {
    1e-5
}
fn d_projection_dim() -> Option<usize> {
    Some(512)
}
fn d_eos_token_id() -> u32 {
    49407
}

/// `eos_token_id` may be written as a list in some configs; pooling needs one
/// id, so only an integer (or a one-element list) is accepted.
fn token_id<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    let bad = |what: String| serde::de::Error::custom(format!("eos_token_id must be one token id for CLIP pooling, got {what}"));
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Err(bad("null".into())),
        Some(v) => match serde_json::from_value::<OneOrMany>(v.clone()) {
            Ok(OneOrMany::One(id)) => Ok(id),
            Ok(OneOrMany::Many(ids)) if ids.len() == 1 => Ok(ids[0]),
            _ => Err(bad(v.to_string())),
        },
    }
}

impl ClipTextConfig {
    /// Read and validate a transformers `config.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw: serde_json::Value = read_json(path)?;
        // A full `CLIPModel` config nests the text tower; pointing at it is a
        // likely mistake and would otherwise silently build a default model.
        if raw.get("text_config").is_some() {
            return Err(Error::config(path, "this is a full CLIPModel config (it has `text_config`); expected a text encoder's config.json"));
        }
        let cfg: Self = serde_json::from_value(raw).map_err(|e| Error::config(path, e.to_string()))?;
        cfg.validate().map_err(|msg| Error::config(path, msg))?;
        Ok(cfg)
    }

    /// Checks that the sizes can build a model (transformers'
    /// `validate_architecture` plus the non-zero sizes it takes for granted).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in sizes {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!("layer_norm_eps must be positive, got {}", self.layer_norm_eps));
        }
        if self.projection_dim == Some(0) {
            return Err("projection_dim must be positive".into());
        }
        Ok(())
    }

    /// Whether `architectures` names `CLIPTextModelWithProjection` (SDXL's
    /// `text_encoder_2`), i.e. whether the checkpoint has `text_projection`.
    pub fn has_projection(&self) -> bool {
        self.architectures.as_ref().is_some_and(|a| a.iter().any(|s| s == "CLIPTextModelWithProjection"))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> crate::scratch::ScratchFile {
        crate::scratch::ScratchFile::new(&format!("psotune-clip-config-{name}"), "config.json", text).unwrap()
    }

    #[test]
    fn reads_sdxl_text_encoder_2_and_ignores_unknown_keys() {
        let p = write("sdxl",
            r#"{"architectures": ["CLIPTextModelWithProjection"], "attention_dropout": 0.0,
                "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "gelu",
                "hidden_size": 1280, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
                "max_position_embeddings": 77, "model_type": "clip_text_model",
                "num_attention_heads": 20, "num_hidden_layers": 32, "pad_token_id": 1,
                "projection_dim": 1280, "torch_dtype": "float16", "vocab_size": 49408}"#,
        );
        let c = ClipTextConfig::from_file(&p).unwrap();
        assert_eq!(c.hidden_act, ClipActivation::Gelu);
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.head_dim()), (1280, 32, 64));
        assert_eq!(c.eos_token_id, 2);
        assert_eq!(c.projection_dim, Some(1280));
        assert!(c.has_projection());
    }

    #[test]
    fn missing_keys_take_transformers_defaults() {
        let c = ClipTextConfig::from_file(write("defaults", "{}")).unwrap();
        assert_eq!(c.hidden_act, ClipActivation::QuickGelu);
        assert_eq!((c.vocab_size, c.hidden_size, c.eos_token_id), (49408, 512, 49407));
        assert!(!c.has_projection());
    }

    #[test]
    fn unsupported_values_are_rejected_naming_the_file() {
        let p = write("act", r#"{"hidden_act": "relu"}"#);
        let msg = ClipTextConfig::from_file(&p).unwrap_err().to_string();
        assert!(msg.contains("config.json") && msg.contains("relu"), "{msg}");

        let p = write("heads", r#"{"hidden_size": 10, "num_attention_heads": 3}"#);
        let msg = ClipTextConfig::from_file(&p).unwrap_err().to_string();
        assert!(msg.contains("config.json") && msg.contains("num_attention_heads"), "{msg}");

        let p = write("eos", r#"{"eos_token_id": [1, 2]}"#);
        let msg = ClipTextConfig::from_file(&p).unwrap_err().to_string();
        assert!(msg.contains("eos_token_id"), "{msg}");

        let p = write("full", r#"{"text_config": {}, "vision_config": {}}"#);
        assert!(ClipTextConfig::from_file(&p).unwrap_err().to_string().contains("CLIPModel"));
    }
}
