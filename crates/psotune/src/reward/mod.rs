//! Rewards: score generated images (with their prompts), higher is better.
//!
//! Online PSO (pso.md §3b) ranks two samples of the same prompt by a
//! reward; evaluation reports mean rewards on held-out prompts. Every
//! scorer — built-in statistics, the emoji evaluator, native CLIP-family
//! models, an external command — implements [`Reward`], so the training
//! loop never knows which one it has.
//!
//! - [`stats`]: colourfulness (Hasler & Süsstrunk 2003), JPEG
//!   compressibility (DDPO);
//! - [`evaluator`]: the emoji evaluator's style score and prompt alignment;
//! - [`command`]: any program speaking JSON lines over stdin/stdout;
//! - [`RewardConfig`]: the `[reward]` section of a run config, which builds one.

pub mod command;
pub mod config;
pub mod evaluator;
pub mod stats;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

pub use command::{CommandReward, DEFAULT_TIMEOUT_SECS};
pub use config::RewardConfig;
pub use evaluator::{AlignmentReward, PromptCategories, StyleReward};
pub use stats::{colourfulness, jpeg_compressibility, Colourfulness, JpegCompressibility};

/// A scorer of images given their prompts.
///
/// `&mut self` because some rewards hold state between calls (an external
/// process and its pipes, a cache of text embeddings).
pub trait Reward {
    /// A short name for logs and metrics (e.g. `"colourfulness"`).
    fn name(&self) -> &str;

    /// Scores `images` (`[N, 3, H, W]`, f32, values in `[-1, 1]`, as the
    /// VAE decodes them) against `prompts` (`N` strings, one per image).
    /// Returns `N` finite scores; higher is better.
    fn score(&mut self, images: &Tensor, prompts: &[String]) -> Result<Vec<f32>>;
}

// Native CLIP-family scorers (CLIP score, PickScore, HPSv2, LAION
// aesthetic), loaded from local files.
mod aesthetic;
mod clip_score;
mod hpsv2;
mod image_text;
mod native;
mod pickscore;
pub mod preprocess;
pub mod resample;

pub use aesthetic::{AestheticHead, AestheticScorer};
pub use clip_score::load_clip_score;
pub use hpsv2::load_hpsv2;
pub use image_text::{DualEncoder, ImageTextScorer, ScoreRule};
pub use native::{load_native_reward, NativeReward};
pub use pickscore::load_pickscore;
/// Why a reward could not score (or be built). Every variant names the
/// scorer; the external command's carry the tail of its stderr, which is
/// where a Python traceback is.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("reward command {command}: cannot start: {source}")]
    Spawn { command: String, source: std::io::Error },

    /// The scorer answered `{"error": "..."}`.
    #[error("reward command {command} reported an error: {msg}")]
    Scorer { command: String, msg: String },

    #[error("reward command {command}: malformed reply ({msg}): {reply}")]
    Malformed { command: String, reply: String, msg: String },

    #[error("reward command {command}: {got} scores for {want} images")]
    WrongCount { command: String, got: usize, want: usize },

    #[error("reward {reward}: score {index} is {value}, not a finite number")]
    NonFinite { reward: String, index: usize, value: f64 },

    /// The process closed its stdout or exited (`status` when known).
    #[error("reward command {command} exited ({status}) before replying; its stderr ends with:\n{stderr_tail}")]
    Crashed { command: String, status: String, stderr_tail: String },

    #[error("reward command {command} did not reply within {secs} s (killed); its stderr ends with:\n{stderr_tail}")]
    Timeout { command: String, secs: u64, stderr_tail: String },

    /// Prompt alignment needs each prompt's category.
    #[error("reward {reward}: no category known for prompt {prompt:?} (add it to {source_of_map})")]
    UnknownPrompt { reward: String, prompt: String, source_of_map: String },

    #[error("reward {reward}: {msg}")]
    Invalid { reward: String, msg: String },
}

/// Images `[N, 3, H, W]` in `[-1, 1]` as 8-bit RGB (row-major HWC per
/// image), rounded as `pipeline::image::save_png` rounds: every reward that
/// reads pixels sees exactly the bytes an external scorer reads from the
/// PNGs, so built-in and command rewards agree to the last bit.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<(usize, usize, Vec<u8>)>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::invalid(format!("rewards take RGB images [N, 3, H, W], got {:?}", images.dims())));
    }
    // The pipeline's own mapping to [0, 1]: x / 2 + 0.5 in f32, then clamp.
    let unit = ((images.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let hwc = unit.permute((0, 2, 3, 1))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w * 3;
    Ok((0..n).map(|i| (w, h, hwc[i * plane..(i + 1) * plane].iter().map(|v| (v * 255.0).round() as u8).collect())).collect())
}

/// Check a scorer's output: one finite score per image.
pub(crate) fn check_scores(reward: &str, scores: Vec<f64>, want: usize) -> Result<Vec<f32>> {
    if scores.len() != want {
        let e = RewardError::WrongCount { command: reward.to_string(), got: scores.len(), want };
        return Err(e.into());
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite() || !(**v as f32).is_finite()) {
        return Err(RewardError::NonFinite { reward: reward.to_string(), index, value }.into());
    }
    Ok(scores.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rgb8_rounds_like_save_png() {
        // [-1, 1] -> [0, 1] -> *255, rounded: -1 -> 0, 0 -> 128 (127.5 rounds up), 1 -> 255.
        let x = Tensor::new(&[-1f32, 0.0, 1.0, 2.0, -0.5, 0.25], &Device::Cpu).unwrap().reshape((1, 3, 1, 2)).unwrap();
        let out = to_rgb8(&x).unwrap();
        assert_eq!(out.len(), 1);
        let (w, h, px) = &out[0];
        assert_eq!((*w, *h), (2, 1));
        // HWC: pixel 0 = (c0[0], c1[0], c2[0]) = (-1, 1, -0.5); pixel 1 = (0, 2, 0.25)
        assert_eq!(px, &vec![0, 255, 64, 128, 255, 159]);
    }

    #[test]
    fn scores_are_checked() {
        assert_eq!(check_scores("r", vec![1.0, -2.5], 2).unwrap(), vec![1.0, -2.5]);
        assert!(matches!(check_scores("r", vec![1.0], 2), Err(Error::Reward(RewardError::WrongCount { got: 1, want: 2, .. }))));
        assert!(matches!(check_scores("r", vec![1.0, f64::NAN], 2), Err(Error::Reward(RewardError::NonFinite { index: 1, .. }))));
        assert!(matches!(check_scores("r", vec![1e300], 1), Err(Error::Reward(RewardError::NonFinite { .. }))));
    }
}
