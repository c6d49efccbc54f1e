//! PickScore (Kirstain et al. 2023) as its model card computes it:
//! `logit_scale.exp() * cos(image, text)`, the model being a CLIP-H
//! `CLIPModel` in the transformers layout (PickScore_v1) and the processor
//! that of its base model, CLIP-ViT-H-14-laion2B-s32B-b79K.

use std::path::Path;

use candle_core::Device;

use super::image_text::{clip_model_parts, ImageTextScorer, ScoreRule};
use crate::error::{Error, Result};

/// Load from a transformers `CLIPModel` folder (`config.json`,
/// `model.safetensors`). PickScore_v1's own folder has no tokenizer or
/// processor: pass the base model's folder (`vocab.json` + `merges.txt` or
/// `tokenizer.json`, `preprocessor_config.json`) as `processor_dir`, or copy
/// those files next to the weights.
pub fn load_pickscore(dir: &Path, processor_dir: Option<&Path>, device: &Device) -> Result<ImageTextScorer> {
    let (model, tokenizer, preprocess) = clip_model_parts(dir, processor_dir, device)?;
    let scale = model.logit_scale()?.exp();
    if !scale.is_finite() {
        return Err(Error::ModelFolder { path: dir.to_path_buf(), msg: format!("logit_scale.exp() is {scale}: not a usable PickScore checkpoint") });
    }
    Ok(ImageTextScorer::new("pickscore", Box::new(model), tokenizer, preprocess, ScoreRule::Scaled(scale), device))
}
