//! One entry point for the native CLIP-family scorers, for configs and the
//! CLI: a kind, a path and an optional second path. Everything is read
//! from local files; nothing is downloaded.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::aesthetic::AestheticScorer;
use super::clip_score::load_clip_score;
use super::hpsv2::load_hpsv2;
use super::pickscore::load_pickscore;
use super::Reward;
use crate::error::{Error, Result};

/// A native scorer (serde names: `clip-score`, `pickscore`, `hpsv2`,
/// `aesthetic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NativeReward {
    /// 100 * max(cos, 0) with a transformers `CLIPModel` (OpenAI CLIP ViT-L/14).
    #[serde(rename = "clip-score")]
    ClipScore,
    /// logit_scale.exp() * cos with PickScore_v1 (a CLIP-H `CLIPModel`).
    #[serde(rename = "pickscore")]
    PickScore,
    /// cos with HPSv2's open_clip ViT-H-14.
    #[serde(rename = "hpsv2")]
    HpsV2,
    /// The LAION aesthetic predictor (v2 MLP or v1 linear head) on CLIP ViT-L/14.
    #[serde(rename = "aesthetic")]
    Aesthetic,
}

impl NativeReward {
    pub const ALL: [NativeReward; 4] = [NativeReward::ClipScore, NativeReward::PickScore, NativeReward::HpsV2, NativeReward::Aesthetic];

    /// The serde / CLI name.
    pub fn name(self) -> &'static str {
        match self {
            NativeReward::ClipScore => "clip-score",
            NativeReward::PickScore => "pickscore",
            NativeReward::HpsV2 => "hpsv2",
            NativeReward::Aesthetic => "aesthetic",
        }
    }
}

impl std::str::FromStr for NativeReward {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        NativeReward::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = NativeReward::ALL.iter().map(|k| k.name()).collect();
            Error::invalid(format!("unknown reward {s:?} (one of {})", names.join(", ")))
        })
    }
}

impl std::fmt::Display for NativeReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Load a native scorer from local files.
///
/// | kind | `path` | `aux` |
/// |---|---|---|
/// | `clip-score` | transformers `CLIPModel` folder: `config.json`, `model.safetensors`, tokenizer files, `preprocessor_config.json` (optional) | optional folder searched first for the tokenizer and `preprocessor_config.json` |
/// | `pickscore` | PickScore_v1 `CLIPModel` folder: `config.json`, `model.safetensors` | the processor folder of CLIP-ViT-H-14-laion2B-s32B-b79K (tokenizer files, `preprocessor_config.json`), unless they were copied into `path` |
/// | `hpsv2` | folder with `open_clip_config.json`, `open_clip_model.safetensors` (or `model.safetensors`) and tokenizer files; or the weights file with those beside it | optional tokenizer folder |
/// | `aesthetic` | the head, `.safetensors` (v2 MLP `layers.{0,2,4,6,7}` or v1 `weight`/`bias`) | **required**: the CLIP ViT-L/14 `CLIPModel` folder the head sits on |
///
/// Tokenizer files are `vocab.json` + `merges.txt` (or `tokenizer.json`),
/// in the folder or its `tokenizer/`. tools/README.md shows how to convert
/// the official checkpoints.
pub fn load_native_reward(kind: NativeReward, path: &Path, aux: Option<&Path>, device: &Device) -> Result<Box<dyn Reward>> {
    Ok(match kind {
        NativeReward::ClipScore => Box::new(load_clip_score(path, aux, device)?),
        NativeReward::PickScore => Box::new(load_pickscore(path, aux, device)?),
        NativeReward::HpsV2 => Box::new(load_hpsv2(path, aux, device)?),
        NativeReward::Aesthetic => {
            let Some(clip) = aux else {
                return Err(Error::invalid(format!(
                    "the aesthetic reward needs the CLIP ViT-L/14 folder its head {} sits on (the aux path)",
                    path.display()
                )));
            };
            Box::new(AestheticScorer::load(path, clip, device)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for k in NativeReward::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<NativeReward>(&json).unwrap(), k);
            assert_eq!(k.name().parse::<NativeReward>().unwrap(), k);
        }
        assert!("pick-score".parse::<NativeReward>().unwrap_err().to_string().contains("pickscore"));
    }

    #[test]
    fn aesthetic_without_its_clip_is_a_clear_error() {
        let err = load_native_reward(NativeReward::Aesthetic, Path::new("/nonexistent/head.safetensors"), None, &Device::Cpu);
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("CLIP ViT-L/14") && msg.contains("head.safetensors"), "{msg}");
    }
}
