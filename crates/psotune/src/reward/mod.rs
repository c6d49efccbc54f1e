//! Rewards: score generated images (with their prompts), higher is better.
//!
//! Online PSO (pso.md §3b) ranks two samples of the same prompt by a
//! reward; evaluation reports mean rewards on held-out prompts. Every
//! scorer — built-in statistics, the emoji evaluator, native CLIP-family
//! models, an external command — implements [`Reward`], so the training
//! loop never knows which one it has.

use candle_core::Tensor;

use crate::error::Result;

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
