//! CLIP score as torchmetrics' `CLIPScore` computes it
//! (functional/multimodal/clip_score.py): 100 * max(cos(image, text), 0),
//! with OpenAI CLIP ViT-L/14 (or any CLIP) in the transformers layout and
//! its processor.
//!
//! One difference, on purpose: torchmetrics cuts token ids past 77 after
//! tokenizing, which drops the end-of-text token that CLIP pools at; we
//! truncate as the tokenizer does (`truncation=True`), keeping it. Prompts
//! of up to 75 tokens score the same either way.

use std::path::Path;

use candle_core::Device;

use super::image_text::{clip_model_parts, ImageTextScorer, ScoreRule};
use crate::error::Result;

/// Load from a transformers `CLIPModel` folder: `config.json`,
/// `model.safetensors` (or a sharded index), the CLIP tokenizer files
/// (`vocab.json` + `merges.txt` or `tokenizer.json`, here or in
/// `tokenizer/`) and, optionally, `preprocessor_config.json`.
/// `processor_dir` is searched first for the tokenizer and processor files.
pub fn load_clip_score(dir: &Path, processor_dir: Option<&Path>, device: &Device) -> Result<ImageTextScorer> {
    let (model, tokenizer, preprocess) = clip_model_parts(dir, processor_dir, device)?;
    Ok(ImageTextScorer::new("clip-score", Box::new(model), tokenizer, preprocess, ScoreRule::ClipScore, device))
}
