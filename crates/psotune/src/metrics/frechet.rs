//! The Frechet distance between two Gaussians fitted to feature sets, the
//! statistic behind FID (Heusel et al. 2017, "GANs trained by a two
//! time-scale update rule converge to a local Nash equilibrium", eq. 6):
//!
//! ```text
//! d^2 = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})
//! ```
//!
//! `(C1 C2)^{1/2}` is not symmetric, and the reference implementations take
//! it with a general matrix square root (scipy `sqrtm`), which can return
//! complex noise. C1 C2 is similar to the symmetric positive semi-definite
//! `C1^{1/2} C2 C1^{1/2}`, so they share eigenvalues, and the trace is the
//! sum of the square roots of that symmetric matrix's eigenvalues: two
//! symmetric eigendecompositions, no complex arithmetic.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::linalg::{matmul, sqrt_psd, sym_eig};
use crate::error::{Error, Result};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// Number of vectors the statistics were taken from.
    pub count: usize,
    /// Mean, `dim` values.
    pub mean: Vec<f64>,
    /// Unbiased covariance (divided by count - 1, as `np.cov`), `dim * dim`
    /// values row-major.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of the rows of a [N, D] tensor (any float dtype), N >= 2.
    pub fn from_tensor(features: &Tensor) -> Result<Self> {
        let (n, d) = features.dims2().map_err(|_| {
            Error::invalid(format!("FeatureStats: features must be [N, D], got shape {:?}", features.dims()))
        })?;
        let data = features.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Self::from_rows(&data, n, d)
    }

    /// Statistics of `n` row-major vectors of `d` values each, n >= 2.
    pub fn from_rows(data: &[f64], n: usize, d: usize) -> Result<Self> {
        if data.len() != n * d || d == 0 {
            return Err(Error::invalid(format!("FeatureStats: {} values for {n} vectors of {d}", data.len())));
        }
        if n < 2 {
            return Err(Error::invalid(format!("FeatureStats: need at least 2 vectors for a covariance, got {n}")));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!("FeatureStats: vector {} has a non-finite value {}", i / d, data[i])));
        }
        let mut mean = vec![0.0; d];
        for row in data.chunks_exact(d) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += x;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // Upper triangle of the centred scatter matrix, then mirrored.
        let mut cov = vec![0.0; d * d];
        let mut centred = vec![0.0; d];
        for row in data.chunks_exact(d) {
            for ((c, x), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = x - m;
            }
            for i in 0..d {
                let ci = centred[i];
                for (acc, cj) in cov[i * d + i..(i + 1) * d].iter_mut().zip(&centred[i..]) {
                    *acc += ci * cj;
                }
            }
        }
        let denom = (n - 1) as f64;
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / denom;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        Ok(FeatureStats { count: n, mean, cov })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// The squared Frechet distance between the Gaussians of `a` and `b` (what
/// FID reports). Tiny negative eigenvalues from rounding are clamped to 0,
/// and so is a result that rounding pushes just below 0.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d || a.cov.len() != d * d || b.cov.len() != d * d {
        return Err(Error::invalid(format!(
            "frechet_distance: feature dimensions differ ({} and {})",
            a.dim(),
            b.dim()
        )));
    }
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = |c: &[f64]| (0..d).map(|i| c[i * d + i]).sum::<f64>();
    let s1 = sqrt_psd(&a.cov, d)?;
    let mut m = matmul(&matmul(&s1, &b.cov, d), &s1, d);
    // Symmetrise away the rounding of the two products.
    for i in 0..d {
        for j in 0..i {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    let tr_sqrt: f64 = sym_eig(&m, d)?.values.iter().map(|l| l.max(0.0).sqrt()).sum();
    Ok((mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * tr_sqrt).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The deterministic features both this test and the numpy reference
    /// build: x[i, j] = sin(0.7 i + 1.3 j + phase) + 0.05 j cos(0.11 i j).
    fn features(n: usize, d: usize, phase: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let (fi, fj) = (i as f64, j as f64);
                out.push((0.7 * fi + 1.3 * fj + phase).sin() + 0.05 * fj * (0.11 * fi * fj).cos());
            }
        }
        out
    }

    /// Hand-computed: 1-D sets {0, 2} (mean 1, var 2) and {1, 2, 3} (mean 2,
    /// var 1): d^2 = (1-2)^2 + 2 + 1 - 2 sqrt(2) = 4 - 2 sqrt(2).
    #[test]
    fn one_dimensional_by_hand() {
        let a = FeatureStats::from_rows(&[0.0, 2.0], 2, 1).unwrap();
        let b = FeatureStats::from_rows(&[1.0, 2.0, 3.0], 3, 1).unwrap();
        assert_eq!((a.mean[0], a.cov[0]), (1.0, 2.0));
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - (4.0 - 2.0 * 2f64.sqrt())).abs() < 1e-14, "{got}");
    }

    /// numpy 2.x reference, with the trace taken through the general
    /// eigenvalues of C1 C2 (an independent route to the same number):
    /// ```python
    /// def feats(n, d, phase):
    ///     i, j = np.meshgrid(np.arange(n), np.arange(d), indexing="ij")
    ///     return np.sin(0.7*i + 1.3*j + phase) + 0.05*j*np.cos(0.11*i*j)
    /// def fid(x, y):
    ///     m1, m2 = x.mean(0), y.mean(0)
    ///     c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ///     ev = np.linalg.eigvals(c1 @ c2)
    ///     tr = np.sqrt(np.clip(ev.real, 0, None)).sum()
    ///     return ((m1-m2)**2).sum() + np.trace(c1) + np.trace(c2) - 2*tr
    /// x, y = feats(40, 12, 0.0), feats(30, 12, 0.4)
    /// print(repr(x.mean(0)[3]), repr(np.cov(x, rowvar=False)[2, 7]), repr(fid(x, y)))
    /// print(repr(fid(feats(64, 8, 0.0), feats(64, 8, 1e-3))))
    /// ```
    const NP_MEAN_3: f64 = -0.06255178180482844;
    const NP_COV_2_7: f64 = 0.6182924550337752;
    const NP_FID: f64 = 0.0587096827459046;
    const NP_FID_NEAR: f64 = 3.276946713981488e-08;

    #[test]
    fn matches_numpy() {
        let (x, y) = (features(40, 12, 0.0), features(30, 12, 0.4));
        let a = FeatureStats::from_rows(&x, 40, 12).unwrap();
        let b = FeatureStats::from_rows(&y, 30, 12).unwrap();
        assert!((a.mean[3] - NP_MEAN_3).abs() < 1e-14, "{}", a.mean[3]);
        assert!((a.cov[2 * 12 + 7] - NP_COV_2_7).abs() < 1e-14, "{}", a.cov[2 * 12 + 7]);
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - NP_FID).abs() < 1e-9 * NP_FID, "{got} vs {NP_FID}");
        // Symmetric in its arguments.
        let back = frechet_distance(&b, &a).unwrap();
        assert!((got - back).abs() < 1e-10, "{got} vs {back}");

        let near = frechet_distance(
            &FeatureStats::from_rows(&features(64, 8, 0.0), 64, 8).unwrap(),
            &FeatureStats::from_rows(&features(64, 8, 1e-3), 64, 8).unwrap(),
        )
        .unwrap();
        assert!((near - NP_FID_NEAR).abs() < 1e-12, "{near} vs {NP_FID_NEAR}");
    }

    #[test]
    fn identical_sets_are_at_zero_even_when_rank_deficient() {
        // 5 vectors in 16 dimensions: the covariance has rank 4, and its
        // zero eigenvalues come out as tiny negatives.
        let x = features(5, 16, 0.2);
        let a = FeatureStats::from_rows(&x, 5, 16).unwrap();
        let d = frechet_distance(&a, &a).unwrap();
        assert!((0.0..1e-9).contains(&d), "{d}");
        // A pure shift moves only the mean term.
        let shifted: Vec<f64> = x.iter().map(|v| v + 0.5).collect();
        let b = FeatureStats::from_rows(&shifted, 5, 16).unwrap();
        // The covariance's 12 zero eigenvalues come out as +-1e-16; the
        // square roots of the positive ones (1e-8 each) are what the result
        // can be off by, the usual sensitivity of FID with fewer vectors
        // than dimensions.
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - 16.0 * 0.25).abs() < 1e-5, "{d}");
    }

    #[test]
    fn from_tensor_and_errors() {
        let x = features(10, 4, 0.0);
        let t = Tensor::from_vec(x.iter().map(|v| *v as f32).collect::<Vec<_>>(), (10, 4), &Device::Cpu).unwrap();
        let a = FeatureStats::from_tensor(&t).unwrap();
        let b = FeatureStats::from_rows(&x, 10, 4).unwrap();
        assert!(a.mean.iter().zip(&b.mean).all(|(p, q)| (p - q).abs() < 1e-6));
        assert_eq!(a.count, 10);
        let one = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(FeatureStats::from_tensor(&one).unwrap_err().to_string().contains("at least 2"));
        let flat = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(FeatureStats::from_tensor(&flat).unwrap_err().to_string().contains("[N, D]"));
        assert!(FeatureStats::from_rows(&[0.0, f64::NAN], 2, 1).unwrap_err().to_string().contains("vector 1"));
        let c = FeatureStats::from_rows(&features(3, 5, 0.0), 3, 5).unwrap();
        assert!(frechet_distance(&a, &c).unwrap_err().to_string().contains("4 and 5"));
    }

    #[test]
    fn dimension_256_is_fast() {
        let (n, d) = (600, 256);
        let a = FeatureStats::from_rows(&features(n, d, 0.0), n, d).unwrap();
        let b = FeatureStats::from_rows(&features(n, d, 0.3), n, d).unwrap();
        let t = std::time::Instant::now();
        let v = frechet_distance(&a, &b).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(v.is_finite() && v > 0.0);
        // Well under a second on an idle core; generous for a shared machine.
        assert!(secs < 3.0, "{secs} s");
    }
}
