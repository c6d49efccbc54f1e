//! What the network predicts (diffusers `prediction_type`) and the conversion
//! of its output into (eps_hat, x0_hat), in the variance-preserving
//! parametrisation x_t = sqrt(ab) x0 + sqrt(1 - ab) eps.
//!
//! Formulas as in diffusers `DDIMScheduler.step` (scheduling_ddim.py); v is
//! the velocity of Salimans & Ho, v = sqrt(ab) eps - sqrt(1 - ab) x0.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Prediction {
    /// The noise eps (all SD 1.x/2.x-base/XL models and their distillations).
    #[default]
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The clean sample x0.
    #[serde(rename = "sample")]
    Sample,
    /// The velocity v (SD 2.x 768 px models).
    #[serde(rename = "v_prediction")]
    VPrediction,
}

impl Prediction {
    /// (eps_hat, x0_hat) from the network output `out` at the VP sample `x_t`.
    /// `alpha_bar` holds one value for the whole batch or one per sample.
    pub fn eps_x0(self, x_t: &Tensor, out: &Tensor, alpha_bar: &[f64]) -> Result<(Tensor, Tensor)> {
        let a: Vec<f64> = alpha_bar.iter().map(|ab| ab.sqrt()).collect();
        let s: Vec<f64> = alpha_bar.iter().map(|ab| (1.0 - ab).sqrt()).collect();
        match self {
            Prediction::Epsilon => {
                // x0 = (x - sqrt(1-ab) eps) / sqrt(ab)
                let x0 = per_sample_div(&(x_t - per_sample_mul(out, &s)?)?, &a)?;
                Ok((out.clone(), x0))
            }
            Prediction::Sample => {
                // eps = (x - sqrt(ab) x0) / sqrt(1-ab)
                let eps = per_sample_div(&(x_t - per_sample_mul(out, &a)?)?, &s)?;
                Ok((eps, out.clone()))
            }
            Prediction::VPrediction => {
                let x0 = (per_sample_mul(x_t, &a)? - per_sample_mul(out, &s)?)?;
                let eps = (per_sample_mul(out, &a)? + per_sample_mul(x_t, &s)?)?;
                Ok((eps, x0))
            }
        }
    }

    /// The training target for this prediction type (diffusers training
    /// scripts: `noise`, `latents`, or `scheduler.get_velocity`).
    pub fn target(self, x0: &Tensor, eps: &Tensor, alpha_bar: &[f64]) -> Result<Tensor> {
        match self {
            Prediction::Epsilon => Ok(eps.clone()),
            Prediction::Sample => Ok(x0.clone()),
            Prediction::VPrediction => {
                let a: Vec<f64> = alpha_bar.iter().map(|ab| ab.sqrt()).collect();
                let s: Vec<f64> = alpha_bar.iter().map(|ab| (1.0 - ab).sqrt()).collect();
                per_sample_mul(eps, &a)? - per_sample_mul(x0, &s)?
            }
        }
    }
}

/// x * c, with c one scalar or one value per sample (dim 0), kept in x's dtype.
pub(crate) fn per_sample_mul(x: &Tensor, c: &[f64]) -> Result<Tensor> {
    match c {
        [c] => x.affine(*c, 0.0),
        _ => x.broadcast_mul(&coeff_tensor(x, c)?),
    }
}

/// x / c, per sample as in [`per_sample_mul`].
pub(crate) fn per_sample_div(x: &Tensor, c: &[f64]) -> Result<Tensor> {
    match c {
        [c] => x / *c,
        _ => x.broadcast_div(&coeff_tensor(x, c)?),
    }
}

/// A [b, 1, 1, ...] tensor of per-sample coefficients matching x's batch.
fn coeff_tensor(x: &Tensor, c: &[f64]) -> Result<Tensor> {
    let dims = x.dims();
    if dims.first() != Some(&c.len()) {
        candle_core::bail!("{} per-sample coefficients for a tensor of shape {:?}", c.len(), dims);
    }
    let mut shape = vec![1usize; dims.len()];
    shape[0] = c.len();
    Tensor::from_slice(c, shape, x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(v: &[f64], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    /// Hand-computed: ab = 0.64 -> sqrt(ab) = 0.8, sqrt(1-ab) = 0.6.
    /// x0 = [1, -2], eps = [0.5, 1] => x_t = 0.8 x0 + 0.6 eps = [1.1, -1.0],
    /// v = 0.8 eps - 0.6 x0 = [-0.2, 2.0].
    #[test]
    fn conversions_recover_eps_and_x0_by_hand() {
        let x_t = t(&[1.1, -1.0], (1, 2));
        let (x0, eps, v) = (t(&[1.0, -2.0], (1, 2)), t(&[0.5, 1.0], (1, 2)), t(&[-0.2, 2.0], (1, 2)));
        for (pred, out) in [(Prediction::Epsilon, &eps), (Prediction::Sample, &x0), (Prediction::VPrediction, &v)] {
            let (e, x) = pred.eps_x0(&x_t, out, &[0.64]).unwrap();
            let (e, x) = (e.to_vec2::<f64>().unwrap(), x.to_vec2::<f64>().unwrap());
            for (got, want) in e[0].iter().zip([0.5, 1.0]).chain(x[0].iter().zip([1.0, -2.0])) {
                assert!((got - want).abs() < 1e-12, "{pred:?}: {got} vs {want}");
            }
            let target = pred.target(&x0, &eps, &[0.64]).unwrap().to_vec2::<f64>().unwrap();
            let want = out.to_vec2::<f64>().unwrap();
            assert!(target[0].iter().zip(&want[0]).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }

    /// Per-sample alpha_bar: sample 0 at ab = 0.64, sample 1 at ab = 0.36
    /// (sqrt 0.6 / 0.8). Epsilon: x0 = (x - s eps) / a.
    #[test]
    fn per_sample_alpha_bar() {
        let x_t = t(&[1.0, 2.0], (2, 1));
        let eps = t(&[0.5, 0.5], (2, 1));
        let (_, x0) = Prediction::Epsilon.eps_x0(&x_t, &eps, &[0.64, 0.36]).unwrap();
        let x0 = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!((x0[0] - (1.0 - 0.6 * 0.5) / 0.8).abs() < 1e-12);
        assert!((x0[1] - (2.0 - 0.8 * 0.5) / 0.6).abs() < 1e-12);
        // f32 tensors keep their dtype.
        let x32 = x_t.to_dtype(DType::F32).unwrap();
        let (e, x) = Prediction::VPrediction.eps_x0(&x32, &x32, &[0.64, 0.36]).unwrap();
        assert_eq!((e.dtype(), x.dtype()), (DType::F32, DType::F32));
    }

    #[test]
    fn wrong_number_of_coefficients_is_an_error() {
        let x = t(&[1.0, 2.0, 3.0], (3, 1));
        assert!(Prediction::Epsilon.eps_x0(&x, &x, &[0.5, 0.5]).is_err());
    }

    #[test]
    fn parses_diffusers_names() {
        let p: Prediction = serde_json::from_str("\"v_prediction\"").unwrap();
        assert_eq!(p, Prediction::VPrediction);
        assert!(serde_json::from_str::<Prediction>("\"flow\"").is_err());
    }
}
