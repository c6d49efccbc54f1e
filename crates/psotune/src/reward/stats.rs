//! Rewards computed from the pixels alone (no prompt), on the 8-bit image
//! ([`super::to_rgb8`]), as the papers that introduced them compute them on
//! saved images:
//!
//! - colourfulness, Hasler & Süsstrunk, "Measuring colourfulness in natural
//!   images" (SPIE 2003): with rg = R - G and yb = (R + G) / 2 - B over the
//!   pixels (0..255), M = sqrt(var_rg + var_yb) + 0.3 sqrt(mean_rg^2 + mean_yb^2)
//!   (population variances);
//! - JPEG compressibility, as DDPO (Black et al. 2023, `jpeg_compressibility`):
//!   minus the size in kB (1000 bytes) of the image saved as JPEG at quality 95.

use candle_core::Tensor;

use super::{to_rgb8, Reward};
use crate::error::{Error, Result};

/// DDPO's JPEG quality.
pub const DEFAULT_JPEG_QUALITY: u8 = 95;

/// Hasler & Süsstrunk's M of one 8-bit RGB image (HWC bytes).
///
/// The sums run left to right in f64 over the pixels in row-major order,
/// and each variance is a second pass over the deviations: the reference
/// scorer in `crates/psotune-cli/tests/scorers/` does the same operations
/// in the same order, so both give bit-identical values.
pub fn colourfulness(rgb: &[u8]) -> f64 {
    let n = rgb.len() / 3;
    if n == 0 {
        return 0.0;
    }
    let opponent = |p: &[u8]| {
        let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
        (r - g, 0.5 * (r + g) - b)
    };
    let (mut sum_rg, mut sum_yb) = (0.0f64, 0.0f64);
    for p in rgb.chunks_exact(3) {
        let (rg, yb) = opponent(p);
        sum_rg += rg;
        sum_yb += yb;
    }
    let (mean_rg, mean_yb) = (sum_rg / n as f64, sum_yb / n as f64);
    let (mut ss_rg, mut ss_yb) = (0.0f64, 0.0f64);
    for p in rgb.chunks_exact(3) {
        let (rg, yb) = opponent(p);
        ss_rg += (rg - mean_rg) * (rg - mean_rg);
        ss_yb += (yb - mean_yb) * (yb - mean_yb);
    }
    let (var_rg, var_yb) = (ss_rg / n as f64, ss_yb / n as f64);
    (var_rg + var_yb).sqrt() + 0.3 * (mean_rg * mean_rg + mean_yb * mean_yb).sqrt()
}

/// DDPO's JPEG compressibility of one 8-bit RGB image: -(JPEG bytes) / 1000.
pub fn jpeg_compressibility(width: usize, height: usize, rgb: &[u8], quality: u8) -> Result<f64> {
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality);
    image::ImageEncoder::write_image(enc, rgb, width as u32, height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::invalid(format!("JPEG encoding of a {width}x{height} image failed: {e}")))?;
    Ok(-(buf.len() as f64) / 1000.0)
}

/// [`colourfulness`] as a [`Reward`].
#[derive(Debug, Clone, Default)]
pub struct Colourfulness;

impl Reward for Colourfulness {
    fn name(&self) -> &str {
        "colourfulness"
    }

    fn score(&mut self, images: &Tensor, _prompts: &[String]) -> Result<Vec<f32>> {
        Ok(to_rgb8(images)?.iter().map(|(_, _, px)| colourfulness(px) as f32).collect())
    }
}

/// [`jpeg_compressibility`] as a [`Reward`].
#[derive(Debug, Clone)]
pub struct JpegCompressibility {
    pub quality: u8,
}

impl Default for JpegCompressibility {
    fn default() -> Self {
        Self { quality: DEFAULT_JPEG_QUALITY }
    }
}

impl Reward for JpegCompressibility {
    fn name(&self) -> &str {
        "jpeg-compressibility"
    }

    fn score(&mut self, images: &Tensor, _prompts: &[String]) -> Result<Vec<f32>> {
        to_rgb8(images)?.iter().map(|(w, h, px)| Ok(jpeg_compressibility(*w, *h, px, self.quality)? as f32)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two pixels, pure red and pure blue:
    /// rg = (255, 0), yb = (127.5, -255): means 127.5 and -63.75,
    /// var_rg = 127.5^2 = 16256.25, var_yb = 191.25^2 = 36576.5625,
    /// M = sqrt(52832.8125) + 0.3 sqrt(16256.25 + 4064.0625)
    ///   = 229.853893... + 0.3 * 142.549333... = 272.618693...
    #[test]
    fn colourfulness_by_hand() {
        let m = colourfulness(&[255, 0, 0, 0, 0, 255]);
        assert!((m - 272.618_693_88).abs() < 1e-6, "{m}");
        assert!((m - (52832.8125f64.sqrt() + 0.3 * 20320.3125f64.sqrt())).abs() < 1e-12);
        // Any grey image has no colour at all.
        assert_eq!(colourfulness(&[10, 10, 10, 200, 200, 200, 77, 77, 77]), 0.0);
        // One flat colour: no spread, only the mean term: rg = 100, yb = 50 - 0.
        assert!((colourfulness(&[100, 0, 0, 100, 0, 0]) - 0.3 * (100f64 * 100.0 + 50.0 * 50.0).sqrt()).abs() < 1e-12);
        assert_eq!(colourfulness(&[]), 0.0);
    }

    #[test]
    fn colourfulness_reward_reads_model_space_images() {
        // Model space [-1, 1]: red = (1, -1, -1), blue = (-1, -1, 1), as [1, 3, 1, 2].
        let x = Tensor::new(&[1f32, -1.0, -1.0, -1.0, -1.0, 1.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 2)).unwrap();
        let s = Colourfulness.score(&x, &["p".into()]).unwrap();
        assert!((s[0] as f64 - 272.618_693_88).abs() < 1e-4, "{s:?}");
    }

    /// DDPO's number is the encoder's byte count / 1000, negated: a flat
    /// image compresses far better than noise, and the score is the size.
    #[test]
    fn jpeg_compressibility_is_minus_kilobytes() {
        let flat = vec![128u8; 32 * 32 * 3];
        let noise: Vec<u8> = (0..32 * 32 * 3).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let a = jpeg_compressibility(32, 32, &flat, 95).unwrap();
        let b = jpeg_compressibility(32, 32, &noise, 95).unwrap();
        assert!(a < 0.0 && b < a, "flat {a} noise {b}");
        // The value is exactly -len / 1000 of the encoding.
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95).encode(&flat, 32, 32, image::ExtendedColorType::Rgb8).unwrap();
        assert_eq!(a, -(buf.len() as f64) / 1000.0);
        // Lower quality, smaller file.
        assert!(jpeg_compressibility(32, 32, &noise, 50).unwrap() > b);
        let x = Tensor::zeros((2, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let s = JpegCompressibility::default().score(&x, &["a".into(), "b".into()]).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], s[1]);
    }
}
