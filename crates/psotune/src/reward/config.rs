//! The `[reward]` section of a run config and the scorer it builds.
//!
//! ```toml
//! [reward]
//! kind = "command"
//! command = ["python3", "examples/pickscore_reward.py"]
//! timeout-secs = 300
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::command::{CommandReward, DEFAULT_TIMEOUT_SECS};
use super::evaluator::{AlignmentReward, PromptCategories, StyleReward};
use super::stats::{Colourfulness, JpegCompressibility, DEFAULT_JPEG_QUALITY};
use super::{load_native_reward, NativeReward, Reward, RewardError};
use crate::error::{Error, Result};

/// Which reward scores the samples, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RewardConfig {
    /// Hasler & Süsstrunk colourfulness of the 8-bit image.
    Colourfulness {},
    /// DDPO's JPEG compressibility: minus the JPEG size in kB.
    #[serde(rename_all = "kebab-case")]
    JpegCompressibility {
        /// JPEG quality (DDPO: 95).
        #[serde(default = "default_quality")]
        quality: u8,
    },
    /// The emoji evaluator's probability of one style.
    #[serde(rename_all = "kebab-case")]
    EvaluatorStyle {
        /// Evaluator folder (`config.json`, `model.safetensors`).
        evaluator: PathBuf,
        /// The style to reward, one of the evaluator's (e.g. "noto").
        style: String,
    },
    /// The emoji evaluator's probability of the prompt's category.
    #[serde(rename_all = "kebab-case")]
    EvaluatorAlignment {
        /// Evaluator folder (`config.json`, `model.safetensors`).
        evaluator: PathBuf,
        /// A `metadata.jsonl` (or its folder) whose `text` -> `subgroup`
        /// give each prompt's category.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<PathBuf>,
        /// Explicit prompt -> category entries (added to, and overriding,
        /// the metadata's).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        categories: BTreeMap<String, String>,
    },
    /// An external program speaking JSON lines (see `reward::command`).
    #[serde(rename_all = "kebab-case")]
    Command {
        /// Program and arguments, e.g. `["python3", "score.py"]`, run in
        /// the directory psotune runs in.
        command: Vec<String>,
        /// Seconds one batch may take before the program counts as hung.
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
    /// CLIP score (torchmetrics convention) of a transformers `CLIPModel`
    /// folder (see `reward::load_native_reward` for the files).
    #[serde(rename_all = "kebab-case")]
    ClipScore {
        path: PathBuf,
        /// A folder searched first for tokenizer and processor files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aux: Option<PathBuf>,
    },
    /// PickScore_v1 (a CLIP-H `CLIPModel` folder).
    #[serde(rename_all = "kebab-case")]
    Pickscore {
        path: PathBuf,
        /// The processor folder of its base model, unless copied into `path`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aux: Option<PathBuf>,
    },
    /// HPSv2 (open_clip ViT-H, converted to safetensors).
    #[serde(rename_all = "kebab-case")]
    Hpsv2 {
        path: PathBuf,
        /// A tokenizer folder.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aux: Option<PathBuf>,
    },
    /// LAION aesthetic predictor: `path` is the head, `aux` the CLIP
    /// ViT-L/14 `CLIPModel` folder it sits on.
    #[serde(rename_all = "kebab-case")]
    Aesthetic { path: PathBuf, aux: PathBuf },
}

fn default_quality() -> u8 {
    DEFAULT_JPEG_QUALITY
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

impl RewardConfig {
    /// The kind's name, as written in the config.
    /// A reward given on a command line as an inline TOML table, e.g.
    /// `{ kind = "evaluator-style", evaluator = "models/emoji/evaluator", style = "noto" }`,
    /// resolved (paths made absolute, values checked).
    pub fn parse_inline(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Wrap {
            reward: RewardConfig,
        }
        let bad = |msg: String| Error::invalid(format!("reward {text}: {msg}"));
        let mut cfg = toml::from_str::<Wrap>(&format!("reward = {text}")).map_err(|e| bad(e.message().to_string()))?.reward;
        cfg.resolve().map_err(bad)?;
        Ok(cfg)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RewardConfig::Colourfulness {} => "colourfulness",
            RewardConfig::JpegCompressibility { .. } => "jpeg-compressibility",
            RewardConfig::EvaluatorStyle { .. } => "evaluator-style",
            RewardConfig::EvaluatorAlignment { .. } => "evaluator-alignment",
            RewardConfig::Command { .. } => "command",
            RewardConfig::ClipScore { .. } => "clip-score",
            RewardConfig::Pickscore { .. } => "pickscore",
            RewardConfig::Hpsv2 { .. } => "hpsv2",
            RewardConfig::Aesthetic { .. } => "aesthetic",
        }
    }

    /// Make every path absolute (relative to the current directory) and
    /// check values that cannot work; `Err` is a message for the config file.
    pub fn resolve(&mut self) -> std::result::Result<(), String> {
        let abs = |p: &mut PathBuf| -> std::result::Result<(), String> {
            if p.is_relative() {
                *p = std::env::current_dir().map_err(|e| e.to_string())?.join(&*p);
            }
            Ok(())
        };
        match self {
            RewardConfig::Colourfulness {} => {}
            RewardConfig::JpegCompressibility { quality } => {
                if !(1..=100).contains(quality) {
                    return Err(format!("reward.quality {quality} must be in 1..=100"));
                }
            }
            RewardConfig::EvaluatorStyle { evaluator, style } => {
                abs(evaluator)?;
                if style.is_empty() {
                    return Err("reward.style must not be empty".into());
                }
            }
            RewardConfig::EvaluatorAlignment { evaluator, metadata, categories } => {
                abs(evaluator)?;
                if let Some(m) = metadata {
                    abs(m)?;
                }
                if metadata.is_none() && categories.is_empty() {
                    return Err("reward kind evaluator-alignment needs reward.metadata or reward.categories (prompt -> category)".into());
                }
            }
            RewardConfig::Command { command, timeout_secs } => {
                if command.first().is_none_or(|p| p.is_empty()) {
                    return Err("reward.command must name a program, e.g. [\"python3\", \"score.py\"]".into());
                }
                if *timeout_secs == 0 {
                    return Err("reward.timeout-secs must be at least 1".into());
                }
            }
            RewardConfig::ClipScore { path, aux } | RewardConfig::Pickscore { path, aux } | RewardConfig::Hpsv2 { path, aux } => {
                abs(path)?;
                if let Some(a) = aux {
                    abs(a)?;
                }
            }
            RewardConfig::Aesthetic { path, aux } => {
                abs(path)?;
                abs(aux)?;
            }
        }
        Ok(())
    }

    /// Build the scorer. `work_dir` holds what a scorer writes (the
    /// command's PNG batches go to `work_dir/reward-images`).
    pub fn build(&self, work_dir: &Path, device: &Device) -> Result<Box<dyn Reward>> {
        Ok(match self {
            RewardConfig::Colourfulness {} => Box::new(Colourfulness),
            RewardConfig::JpegCompressibility { quality } => Box::new(JpegCompressibility { quality: *quality }),
            RewardConfig::EvaluatorStyle { evaluator, style } => Box::new(StyleReward::load(evaluator, style, device)?),
            RewardConfig::EvaluatorAlignment { evaluator, metadata, categories } => {
                let from_meta = match metadata {
                    Some(m) => PromptCategories::from_metadata(m)?,
                    None => PromptCategories::default(),
                };
                let map = if categories.is_empty() { from_meta } else { from_meta.extended(PromptCategories::from_map(categories.clone())) };
                Box::new(AlignmentReward::load(evaluator, map, device)?)
            }
            RewardConfig::Command { command, timeout_secs } => {
                Box::new(CommandReward::spawn(command, &work_dir.join("reward-images"), Duration::from_secs(*timeout_secs))?)
            }
            RewardConfig::ClipScore { path, aux } => load_native_reward(NativeReward::ClipScore, path, aux.as_deref(), device)?,
            RewardConfig::Pickscore { path, aux } => load_native_reward(NativeReward::PickScore, path, aux.as_deref(), device)?,
            RewardConfig::Hpsv2 { path, aux } => load_native_reward(NativeReward::HpsV2, path, aux.as_deref(), device)?,
            RewardConfig::Aesthetic { path, aux } => load_native_reward(NativeReward::Aesthetic, path, Some(aux), device)?,
        })
    }

    /// Check up front that the prompts the run will score are all ones this
    /// reward can score (alignment needs each prompt's category), so a
    /// missing entry fails before any training, naming the prompt.
    pub fn check_prompts<'a>(&self, prompts: impl IntoIterator<Item = &'a String>) -> Result<()> {
        if let RewardConfig::EvaluatorAlignment { metadata, categories, .. } = self {
            let from_meta = match metadata {
                Some(m) => PromptCategories::from_metadata(m)?,
                None => PromptCategories::default(),
            };
            let map = from_meta.extended(PromptCategories::from_map(categories.clone()));
            for p in prompts {
                if map.get(p).is_none() {
                    let source = metadata.as_ref().map_or("reward.categories".to_string(), |m| format!("{} or reward.categories", m.display()));
                    return Err(Error::from(RewardError::UnknownPrompt { reward: self.kind().into(), prompt: p.clone(), source_of_map: source }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every native kind parses from TOML and builds from the tiny parity
    /// fixtures (the scores themselves are checked in tests/reward_parity.rs).
    #[test]
    fn native_kinds_build_from_local_files() {
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/rewards");
        let f = |p: &str| fx.join(p).display().to_string();
        let cases = [
            (format!("kind = \"clip-score\"\npath = {:?}", f("clip-vit")), "clip-score"),
            (format!("kind = \"pickscore\"\npath = {:?}", f("pickscore")), "pickscore"),
            (format!("kind = \"hpsv2\"\npath = {:?}", f("open-clip")), "hpsv2"),
            (format!("kind = \"aesthetic\"\npath = {:?}\naux = {:?}", f("aesthetic/mlp.safetensors"), f("clip-vit")), "aesthetic"),
        ];
        let images = candle_core::Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (text, kind) in cases {
            let c = parse(&text).unwrap();
            assert_eq!(c.kind(), kind);
            let mut r = c.build(&std::env::temp_dir(), &Device::Cpu).unwrap();
            let s = r.score(&images, &["an emoji of a cat".to_string()]).unwrap();
            assert!(s.len() == 1 && s[0].is_finite(), "{kind}: {s:?}");
        }
        assert!(parse("kind = \"aesthetic\"\npath = \"h.safetensors\"").is_err(), "aesthetic needs aux");
    }

    fn parse(text: &str) -> std::result::Result<RewardConfig, String> {
        let mut c: RewardConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.resolve()?;
        Ok(c)
    }

    #[test]
    fn kinds_parse_with_defaults_and_round_trip() {
        assert_eq!(parse("kind = \"colourfulness\"").unwrap(), RewardConfig::Colourfulness {});
        assert_eq!(parse("kind = \"jpeg-compressibility\"").unwrap(), RewardConfig::JpegCompressibility { quality: 95 });
        let c = parse("kind = \"command\"\ncommand = [\"python3\", \"score.py\"]").unwrap();
        assert_eq!(c, RewardConfig::Command { command: vec!["python3".into(), "score.py".into()], timeout_secs: 300 });
        let c = parse("kind = \"evaluator-alignment\"\nevaluator = \"ev\"\ncategories = { \"a cat\" = \"animal-mammal\" }").unwrap();
        let RewardConfig::EvaluatorAlignment { evaluator, .. } = &c else { panic!() };
        assert!(evaluator.is_absolute());
        for c in [c, parse("kind = \"evaluator-style\"\nevaluator = \"/ev\"\nstyle = \"noto\"").unwrap()] {
            let text = toml::to_string(&c).unwrap();
            assert_eq!(parse(&text).unwrap(), c, "{text}");
        }
    }

    #[test]
    fn bad_sections_are_errors() {
        for (text, want) in [
            ("kind = \"colourfulness\"\nstyle = \"noto\"", "style"),
            ("kind = \"pickscore-v9\"", "pickscore-v9"),
            ("kind = \"command\"\ncommand = []", "reward.command"),
            ("kind = \"command\"\ncommand = [\"x\"]\ntimeout-secs = 0", "timeout-secs"),
            ("kind = \"jpeg-compressibility\"\nquality = 0", "quality"),
            ("kind = \"evaluator-alignment\"\nevaluator = \"/ev\"", "reward.metadata"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn alignment_prompts_are_checked_up_front() {
        let c = parse("kind = \"evaluator-alignment\"\nevaluator = \"/ev\"\ncategories = { \"a cat\" = \"animal-mammal\" }").unwrap();
        assert!(c.check_prompts(&["a cat".to_string()]).is_ok());
        let e = c.check_prompts(&["a cat".to_string(), "a dog".to_string()]).unwrap_err().to_string();
        assert!(e.contains("\"a dog\""), "{e}");
        assert!(RewardConfig::Colourfulness {}.check_prompts(&["x".to_string()]).is_ok());
    }
}
