//! Image-set metrics, pure math in f64 on features or pixels:
//!
//! - [`FeatureStats`] and [`frechet_distance`]: the Frechet distance
//!   between Gaussians fitted to two feature sets (FID's statistic; with
//!   the emoji evaluator's features, "emoji-FID").
//! - [`sharpness`] / [`laplacian_variances`]: variance of the Laplacian of
//!   the luma, the statistic that shows blurred few-step samples.
//! - [`mean_cosine_similarity`] (all pairs), [`paired_cosine_similarity`]
//!   (row i with row i) and [`cosine_similarity_matrix`]: image-to-image
//!   similarity of feature vectors.
//!
//! ```text
//! let real = FeatureStats::from_tensor(&evaluator.features(&real_images)?)?;
//! let fake = FeatureStats::from_tensor(&evaluator.features(&samples)?)?;
//! let emoji_fid = frechet_distance(&real, &fake)?;
//! let blur = sharpness(&samples)?;
//! ```

mod frechet;
mod linalg;
mod sharpness;
mod similarity;

pub use frechet::{frechet_distance, FeatureStats};
pub use sharpness::{laplacian_variances, sharpness};
pub use similarity::{cosine_similarity_matrix, mean_cosine_similarity, paired_cosine_similarity};
