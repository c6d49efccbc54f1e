//! HPSv2 (Wu et al. 2023) as its `score` function computes it: the cosine
//! of open_clip's normalised image and text features
//! (`diag(image_features @ text_features.T)`), with the ViT-H-14 model
//! fine-tuned on HPD v2 and open_clip's eval transform.
//!
//! Tokens follow open_clip's `SimpleTokenizer`: bos, BPE tokens, eot, then
//! zeros up to the context length (77), truncated to keep the eot. Its text
//! cleaning (`ftfy.fix_text` and HTML unescaping) is not reproduced: prompts
//! with mojibake or HTML entities (`&amp;`) tokenize differently.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::image_text::{check_output_size, find_tokenizer_dir, ImageTextScorer, ScoreRule};
use super::preprocess::ImagePreprocess;
use crate::error::{Error, Result};
use crate::models::clip::ClipTokenizer;
use crate::models::open_clip::{OpenClipConfig, OpenClipModel};

/// The config open_clip writes next to hub weights.
pub const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";

/// Load an open_clip CLIP. `path` is a folder holding
/// `open_clip_config.json` (the model config, bare or as
/// `{"model_cfg", "preprocess_cfg"}`), the weights as
/// `open_clip_model.safetensors` or `model.safetensors`, and the CLIP
/// tokenizer files (`vocab.json` + `merges.txt` or `tokenizer.json`, here
/// or in `tokenizer/`, with `<|endoftext|>` as pad token); or `path` is the
/// `.safetensors` file itself, with those files beside it.
/// `tokenizer_dir` is searched first for the tokenizer.
pub fn load_hpsv2(path: &Path, tokenizer_dir: Option<&Path>, device: &Device) -> Result<ImageTextScorer> {
    let (dir, weights) = locate(path)?;
    let config_path = dir.join(OPEN_CLIP_CONFIG);
    let cfg = OpenClipConfig::from_file(&config_path)?;
    let model = OpenClipModel::from_file(&weights, &cfg, device)?;

    let dirs: Vec<&Path> = tokenizer_dir.into_iter().chain([dir.as_path()]).collect();
    let tok_dir = find_tokenizer_dir(&dirs)?;
    let tokenizer = ClipTokenizer::from_dir(&tok_dir)?;
    // A pad token other than the eot (the "!" of SD2's tokenizer files) is
    // a special token to transformers' tokenizer and ours, so a "!" in a
    // prompt would not get open_clip's "!</w>" id.
    if tokenizer.pad_id() != tokenizer.eos_id() {
        return Err(Error::Tokenizer {
            path: tok_dir,
            msg: format!(
                "pad token id {} is not the end-of-text id {}: open_clip has no such special token; set \"pad_token\": \"<|endoftext|>\" in tokenizer_config.json",
                tokenizer.pad_id(),
                tokenizer.eos_id()
            ),
        });
    }
    if tokenizer.vocab_size() > cfg.text.vocab_size {
        return Err(Error::Tokenizer {
            path: tok_dir,
            msg: format!("vocabulary of {} tokens exceeds text_cfg.vocab_size {}", tokenizer.vocab_size(), cfg.text.vocab_size),
        });
    }
    let tokenizer = tokenizer.with_padding(cfg.text.context_length, 0)?;

    let preprocess = ImagePreprocess::open_clip(cfg.vision.image_size, &cfg.preprocess);
    check_output_size(&preprocess, cfg.vision.image_size, &config_path)?;
    Ok(ImageTextScorer::new("hpsv2", Box::new(model), tokenizer, preprocess, ScoreRule::Cosine, device))
}

/// (folder, weights file) for a folder or a weights file.
fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_file() {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok((dir, path.to_path_buf()));
    }
    if !path.is_dir() {
        return Err(Error::ModelFolder { path: path.to_path_buf(), msg: "no such file or folder".into() });
    }
    for name in ["open_clip_model.safetensors", "model.safetensors"] {
        if path.join(name).is_file() {
            return Ok((path.to_path_buf(), path.join(name)));
        }
    }
    Err(Error::ModelFolder {
        path: path.to_path_buf(),
        msg: "no open_clip_model.safetensors or model.safetensors (convert a .pt checkpoint with tools/convert_reward_checkpoints.py)".into(),
    })
}
