//! The measurements themselves: one evaluator pass over a batch of
//! images gives their features (emoji-FID against the reference set),
//! style probabilities and category predictions; sharpness is computed
//! from the pixels.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::{frechet_distance, sharpness, FeatureStats};
use crate::models::evaluator::{accuracy, Evaluator};
use crate::ops;

/// What [`Judge::measure`] reports for one set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    pub images: usize,
    /// Frechet distance of the evaluator's features to the reference set
    /// (lower is closer).
    pub emoji_fid: f64,
    /// Mean probability of each style under the style head.
    pub style_scores: BTreeMap<String, f64>,
    /// Fraction of images whose predicted category is their prompt's.
    pub prompt_alignment: f64,
    /// Mean Laplacian variance of the luma ([`crate::metrics::sharpness`]).
    pub sharpness: f64,
}

/// An evaluator with the feature statistics of a reference image set.
pub struct Judge {
    pub evaluator: Evaluator,
    pub reference: FeatureStats,
    pub reference_images: usize,
}

impl Judge {
    /// `reference` is [N, 3, S, S] in [-1, 1] (e.g. the base set's images).
    pub fn new(evaluator: Evaluator, reference: &Tensor) -> Result<Self> {
        let stats = FeatureStats::from_tensor(&evaluator.features(reference)?)?;
        Ok(Judge { evaluator, reference: stats, reference_images: reference.dim(0)? })
    }

    /// Measure `images` ([N, 3, S, S] in [-1, 1]); `categories[i]` is the
    /// category of the prompt image i was drawn for.
    pub fn measure(&self, images: &Tensor, categories: &[String]) -> Result<Measures> {
        let n = images.dim(0)?;
        if categories.len() != n {
            return Err(Error::invalid(format!("measure: {n} images but {} categories", categories.len())));
        }
        let ev = &self.evaluator;
        let targets = categories
            .iter()
            .map(|c| ev.category_index(c).ok_or_else(|| Error::invalid(format!("the evaluator has no category `{c}`"))))
            .collect::<Result<Vec<_>>>()?;
        let out = ev.forward_batched(images)?;
        let probs = ops::softmax_last_dim(&out.style_logits)?.mean(0)?.to_vec1::<f32>()?;
        let style_scores = ev.config.styles.iter().zip(probs).map(|(s, p)| (s.clone(), p as f64)).collect();
        Ok(Measures {
            images: n,
            emoji_fid: frechet_distance(&FeatureStats::from_tensor(&out.features)?, &self.reference)?,
            style_scores,
            prompt_alignment: accuracy(&out.category_logits, &targets)?,
            sharpness: sharpness(images)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::models::evaluator::{init_weights, EvaluatorConfig};
    use crate::nn::Weights;
    use crate::ops::gradcheck::det_tensor;

    fn judge(reference: &Tensor) -> Judge {
        let cfg = EvaluatorConfig {
            image_size: 8,
            in_channels: 3,
            block_channels: vec![4, 8],
            layers_per_block: 1,
            norm_num_groups: 2,
            styles: vec!["a".into(), "b".into()],
            categories: vec!["x".into(), "y".into()],
        };
        let w = Weights::from_tensors(init_weights(&cfg, 1).unwrap(), "init", DType::F32, &Device::Cpu);
        let ev = Evaluator::new(w.var_builder(), &cfg).unwrap();
        Judge::new(ev, reference).unwrap()
    }

    fn images(n: usize, seed: u64) -> Tensor {
        det_tensor(&[n, 3, 8, 8], seed).to_dtype(DType::F32).unwrap().tanh().unwrap()
    }

    #[test]
    fn the_reference_set_is_at_distance_zero_and_others_are_not() {
        let reference = images(24, 1);
        let j = judge(&reference);
        let cats = vec!["x".to_string(); 24];
        let same = j.measure(&reference, &cats).unwrap();
        assert!(same.emoji_fid.abs() < 1e-6, "{}", same.emoji_fid);
        assert_eq!(same.images, 24);
        let other = j.measure(&(images(24, 9) * 0.3).unwrap(), &cats).unwrap();
        assert!(other.emoji_fid > 1e-3, "{}", other.emoji_fid);
        // Zero-initialised heads: uniform style probabilities, and the
        // arg-max of equal logits is the first category.
        assert!((same.style_scores["a"] - 0.5).abs() < 1e-6);
        assert_eq!(same.prompt_alignment, 1.0);
        assert_eq!(j.measure(&reference, &vec!["y".to_string(); 24]).unwrap().prompt_alignment, 0.0);
        assert!((same.sharpness - sharpness(&reference).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn bad_categories_are_errors() {
        let reference = images(6, 1);
        let j = judge(&reference);
        assert!(j.measure(&reference, &["x".to_string()]).unwrap_err().to_string().contains("6 images but 1"));
        let e = j.measure(&reference, &vec!["nope".to_string(); 6]).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
