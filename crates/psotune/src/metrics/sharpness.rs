//! A sharpness statistic: the variance of the discrete Laplacian of the
//! luma (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield
//! microscopy"; OpenCV's `Laplacian(img).var()` is the common form). Blur
//! removes high frequencies, which is exactly what the Laplacian measures,
//! so a model whose few-step samples go soft scores lower.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// ITU-R BT.601 luma weights (R, G, B), which sum to 1.
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// Per image of [N, 3, H, W] in [-1, 1]: the population variance of the
/// 4-neighbour Laplacian `up + down + left + right - 4 centre` of the luma in
/// [0, 1], over the interior pixels (no padding, so borders add nothing).
pub fn laplacian_variances(images: &Tensor) -> Result<Vec<f64>> {
    let (n, c, h, w) = images.dims4().map_err(|_| shape_error(images))?;
    if c != 3 || h < 3 || w < 3 {
        return Err(shape_error(images));
    }
    let data = images.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let plane = h * w;
    let mut out = Vec::with_capacity(n);
    let mut luma = vec![0.0; plane];
    for img in data.chunks_exact(3 * plane) {
        for (p, y) in luma.iter_mut().enumerate() {
            *y = (0..3).map(|ch| LUMA[ch] * (img[ch * plane + p] + 1.0) / 2.0).sum();
        }
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for i in 1..h - 1 {
            for j in 1..w - 1 {
                let at = |r: usize, c: usize| luma[r * w + c];
                let lap = at(i - 1, j) + at(i + 1, j) + at(i, j - 1) + at(i, j + 1) - 4.0 * at(i, j);
                sum += lap;
                sum_sq += lap * lap;
            }
        }
        let count = ((h - 2) * (w - 2)) as f64;
        let mean = sum / count;
        out.push((sum_sq / count - mean * mean).max(0.0));
    }
    Ok(out)
}

/// The mean of [`laplacian_variances`] over the batch.
pub fn sharpness(images: &Tensor) -> Result<f64> {
    let v = laplacian_variances(images)?;
    if v.is_empty() {
        return Err(Error::invalid("sharpness: no images"));
    }
    Ok(v.iter().sum::<f64>() / v.len() as f64)
}

fn shape_error(images: &Tensor) -> Error {
    Error::invalid(format!("sharpness: expected images [N, 3, H, W] with H, W >= 3, got shape {:?}", images.dims()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn image(values: &[f64], c: usize, h: usize, w: usize) -> Tensor {
        Tensor::from_vec(values.to_vec(), (1, c, h, w), &Device::Cpu).unwrap()
    }

    /// A 4x4 grey image, black (-1) but for one white pixel at (1, 1):
    /// Laplacians of the interior are -4 at (1,1), 1 at (1,2) and (2,1), 0
    /// at (2,2); mean -0.5, variance (3.5^2 + 1.5^2 + 1.5^2 + 0.5^2)/4 = 4.25.
    #[test]
    fn single_dot_by_hand() {
        let mut plane = vec![-1.0; 16];
        plane[5] = 1.0;
        let rgb: Vec<f64> = plane.iter().chain(&plane).chain(&plane).copied().collect();
        let v = laplacian_variances(&image(&rgb, 3, 4, 4)).unwrap();
        assert!((v[0] - 4.25).abs() < 1e-12, "{v:?}");
        let flat = image(&[0.3; 48], 3, 4, 4);
        assert_eq!(sharpness(&flat).unwrap(), 0.0);
    }

    /// numpy 2.x:
    /// ```python
    /// i, j, c = np.meshgrid(np.arange(6), np.arange(5), np.arange(3), indexing="ij")
    /// x = np.sin(1.7*i + 0.9*j*j + 2.1*c).transpose(2, 0, 1)     # [3, 6, 5] in [-1, 1]
    /// y = (np.array([0.299, 0.587, 0.114])[:, None, None] * (x + 1) / 2).sum(0)
    /// lap = y[:-2,1:-1] + y[2:,1:-1] + y[1:-1,:-2] + y[1:-1,2:] - 4*y[1:-1,1:-1]
    /// print(repr(lap.var()))
    /// ```
    const NP_LAPLACIAN_VAR: f64 = 0.43765436163456783;

    #[test]
    fn matches_numpy_and_blur_lowers_it() {
        let (h, w) = (6, 5);
        let mut x = vec![0.0; 3 * h * w];
        for c in 0..3 {
            for i in 0..h {
                for j in 0..w {
                    x[(c * h + i) * w + j] = (1.7 * i as f64 + 0.9 * (j * j) as f64 + 2.1 * c as f64).sin();
                }
            }
        }
        let t = image(&x, 3, h, w);
        let got = sharpness(&t).unwrap();
        assert!((got - NP_LAPLACIAN_VAR).abs() < 1e-12, "{got} vs {NP_LAPLACIAN_VAR}");
        // A 2x2 box blur (edge-clamped) of the same image is less sharp.
        let mut blurred = vec![0.0; x.len()];
        for c in 0..3 {
            for i in 0..h {
                for j in 0..w {
                    let at = |r: usize, q: usize| x[(c * h + r.min(h - 1)) * w + q.min(w - 1)];
                    blurred[(c * h + i) * w + j] = (at(i, j) + at(i + 1, j) + at(i, j + 1) + at(i + 1, j + 1)) / 4.0;
                }
            }
        }
        let soft = sharpness(&image(&blurred, 3, h, w)).unwrap();
        assert!(soft < got / 2.0, "{soft} vs {got}");
        // The batch mean is the mean of the images.
        let both = Tensor::cat(&[t, image(&blurred, 3, h, w)], 0).unwrap();
        assert!((sharpness(&both).unwrap() - (got + soft) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_wrong_shapes() {
        let grey = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(sharpness(&grey).unwrap_err().to_string().contains("[1, 1, 4, 4]"));
        let tiny = Tensor::zeros((1, 3, 2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(sharpness(&tiny).is_err());
        let none = Tensor::zeros((0, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(sharpness(&none).unwrap_err().to_string().contains("no images"));
    }
}
