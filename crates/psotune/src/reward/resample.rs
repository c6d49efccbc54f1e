//! Pillow's `Image.resize` for 8-bit RGB images, bit for bit
//! (src/libImaging/Resample.c): separable convolution whose support widens
//! with the downscale factor (that is the antialiasing), weights normalised
//! in f64 then rounded to 22-bit fixed point, a horizontal pass to an 8-bit
//! intermediate, then a vertical pass; a pass whose size does not change is
//! skipped. Both CLIP preprocessors (transformers' `CLIPImageProcessor` with
//! the PIL backend, and torchvision's `Resize` on PIL images that open_clip
//! and OpenAI CLIP use) resize this way, so the scorers see the pixels the
//! reference implementations saw.

/// Pillow's resampling filters that CLIP preprocessors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// An 8-bit RGB image: `height` rows of `width` interleaved RGB pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbU8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbU8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        (data.len() == width * height * 3).then_some(Self { width, height, data })
    }

    pub fn get(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * 3 + c]
    }
}

/// Pillow's `PRECISION_BITS` for 8-bit images: 32 - 8 - 2.
const PRECISION_BITS: u32 = 22;

/// Per output position: the first input index, and one fixed-point weight
/// per input index from there on.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, for the whole
/// input range (no box).
fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negatives clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        // Same operation order as Resample.c: ((x + xmin) - center + 0.5) * ss.
        let w: Vec<f64> = (0..n).map(|x| filter.weight((((x + xmin) as f64 - center) + 0.5) * ss)).collect();
        let total: f64 = w.iter().sum();
        let one = f64::from(1u32 << PRECISION_BITS);
        let fixed = w
            .iter()
            .map(|&k| {
                let k = if total != 0.0 { k / total } else { k };
                if k < 0.0 {
                    (-0.5 + k * one) as i32
                } else {
                    (0.5 + k * one) as i32
                }
            })
            .collect();
        first.push(xmin);
        weights.push(fixed);
    }
    Taps { first, weights }
}

/// Pillow's `clip8`: round-to-nearest was folded in by the initial half.
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

fn horizontal(img: &RgbU8, out_w: usize, filter: Filter) -> RgbU8 {
    let t = taps(img.width, out_w, filter);
    let mut data = Vec::with_capacity(out_w * img.height * 3);
    for y in 0..img.height {
        let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        for (xmin, k) in t.first.iter().zip(&t.weights) {
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &w) in k.iter().enumerate() {
                    acc += i64::from(row[(xmin + i) * 3 + c]) * i64::from(w);
                }
                data.push(clip8(acc));
            }
        }
    }
    RgbU8 { width: out_w, height: img.height, data }
}

fn vertical(img: &RgbU8, out_h: usize, filter: Filter) -> RgbU8 {
    let t = taps(img.height, out_h, filter);
    let stride = img.width * 3;
    let mut data = Vec::with_capacity(stride * out_h);
    for (ymin, k) in t.first.iter().zip(&t.weights) {
        for x in 0..stride {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (i, &w) in k.iter().enumerate() {
                acc += i64::from(img.data[(ymin + i) * stride + x]) * i64::from(w);
            }
            data.push(clip8(acc));
        }
    }
    RgbU8 { width: img.width, height: out_h, data }
}

/// `img.resize((width, height), filter)` as Pillow 13 computes it. Sizes
/// must be positive (callers derive them from positive sizes).
pub fn resize(img: &RgbU8, width: usize, height: usize, filter: Filter) -> RgbU8 {
    // Pillow runs the vertical pass first when the height shrinks by more
    // than twice as many pixels as the width (to make the horizontal pass
    // cheaper); the 8-bit intermediate makes the order visible in the
    // result. Pillow releases before that change always went horizontal
    // first and can differ by one level on such sizes.
    let (dh, dw) = (img.height as i64 - height as i64, img.width as i64 - width as i64);
    let vertical_first = dh > 0 && dh > dw * 2;
    let mut out = img.clone();
    for pass_vertical in if vertical_first { [true, false] } else { [false, true] } {
        if pass_vertical && height != out.height {
            out = vertical(&out, height, filter);
        } else if !pass_vertical && width != out.width {
            out = horizontal(&out, width, filter);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_their_formulas() {
        // Keys cubic, a = -0.5: 1 at 0, 0 at the integers, -0.0625 at 1.5.
        assert_eq!(Filter::Bicubic.weight(0.0), 1.0);
        assert_eq!(Filter::Bicubic.weight(1.0), 0.0);
        assert_eq!(Filter::Bicubic.weight(-1.5), -0.0625);
        assert_eq!(Filter::Bicubic.weight(0.5), 0.5625);
        assert_eq!(Filter::Bicubic.weight(2.0), 0.0);
        assert_eq!(Filter::Bilinear.weight(-0.25), 0.75);
    }

    /// Halving with the triangle filter: the support doubles to 2 input
    /// pixels each side, so output 1 (centre 3.0) takes inputs 1..=4 with
    /// triangle weights 1/4, 3/4, 3/4, 1/4 normalised to 1/8, 3/8, 3/8, 1/8;
    /// output 0 (centre 1.0) is cut at the border: 3/4, 3/4, 1/4 -> /(7/4).
    #[test]
    fn bilinear_halving_by_hand() {
        let t = taps(8, 4, Filter::Bilinear);
        let one = f64::from(1u32 << PRECISION_BITS);
        let q = |x: f64| (0.5 + x * one) as i32;
        assert_eq!(t.first, vec![0, 1, 3, 5]);
        assert_eq!(t.weights[1], vec![q(0.125), q(0.375), q(0.375), q(0.125)]);
        // border: centre 1.0, taps at 0..3 with weights 3/8, 3/8, 1/8 -> /(7/8)
        assert_eq!(t.weights[0], vec![q(3.0 / 7.0), q(3.0 / 7.0), q(1.0 / 7.0)]);
        let img = RgbU8::new(8, 1, (0..8).flat_map(|i| [i * 30, 0, 255]).collect()).unwrap();
        let out = resize(&img, 4, 1, Filter::Bilinear);
        // 0.125 * 30 + 0.375 * 60 + 0.375 * 90 + 0.125 * 120 = 75
        assert_eq!(out.get(1, 0, 0), 75);
        assert_eq!((out.get(1, 0, 1), out.get(1, 0, 2)), (0, 255));
    }

    #[test]
    fn unchanged_sizes_copy_and_constant_images_stay_constant() {
        let img = RgbU8::new(5, 3, vec![77; 45]).unwrap();
        assert_eq!(resize(&img, 5, 3, Filter::Bicubic), img);
        let up = resize(&img, 13, 2, Filter::Bicubic);
        assert!(up.data.iter().all(|&v| v == 77));
        assert_eq!((up.width, up.height), (13, 2));
    }
}
