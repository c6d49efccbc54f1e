//! The emoji evaluator: a small CNN classifier on 32x32 RGB images in
//! [-1, 1] whose pooled features and two heads give the emoji world's
//! measurements (issue 5), miniatures of the usual ones:
//!
//! | measurement       | from                                  | stands for |
//! |-------------------|---------------------------------------|------------|
//! | emoji-FID         | [`Evaluator::features`] + [`crate::metrics::frechet_distance`] | FID |
//! | image similarity  | features + [`crate::metrics::mean_cosine_similarity`] | CLIP-I / DINO |
//! | style score       | [`Evaluator::style_scores`] (softmax of the style head) | a style classifier |
//! | prompt alignment  | [`Evaluator::category_accuracy`] (category head = emoji subgroup) | CLIP-T |
//!
//! Architecture (`config.json`, [`EvaluatorConfig`]): `conv_in` (3x3 to
//! `block_channels[0]`), `down_blocks.{i}.resnets.{j}` pre-activation
//! residual blocks with GroupNorm + SiLU (each level after the first halves
//! the resolution with a stride-2 conv), `norm_out` + SiLU, a global
//! average pool giving `features` [B, block_channels.last()], then the
//! linear `style_head` and `category_head`. Field names are the
//! safetensors keys.
//!
//! ```text
//! let ev = Evaluator::load(Path::new("models/emoji/evaluator"), &Device::Cpu)?;
//! let noto_score = ev.style_scores(&samples, "noto")?;          // Vec<f32>, one per image
//! let fid = frechet_distance(&FeatureStats::from_tensor(&ev.features(&refs)?)?,
//!                            &FeatureStats::from_tensor(&ev.features(&samples)?)?)?;
//! let k = ev.category_index("animal-mammal").unwrap();
//! let alignment = ev.category_accuracy(&samples, &vec![k; n])?;
//!
//! // Training (resumable; writes out/{config.json, model.safetensors, report.json}):
//! let report = train_evaluator(data_dir, run_dir, out_dir, &EvaluatorTrainConfig::default())?;
//! ```
//!
//! Training data is an image folder whose `metadata.jsonl` lines carry
//! `style`, `concept`, `subgroup` and `split`; `split == "holdout"` lines
//! are left out, and about 10% of the remaining concepts (all their
//! styles, chosen by [`is_validation_concept`]) are kept for validation.

mod blocks;
mod config;
mod data;
mod init;
mod loss;
mod model;
mod train;

pub use blocks::{EvaluatorDownBlock, EvaluatorResnet};
pub use config::EvaluatorConfig;
pub use data::is_validation_concept;
pub use init::{init_weights, parameter_shapes};
pub use loss::cross_entropy;
pub use model::{accuracy, Evaluator, EvaluatorOutput, CONFIG_FILE, WEIGHTS_FILE};
pub use train::{train_evaluator, EpochRecord, EvaluatorReport, EvaluatorTrainConfig, REPORT_FILE};

#[cfg(test)]
mod tests;
