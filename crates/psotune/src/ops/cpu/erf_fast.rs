//! GEGLU's element math in f32 without libm calls: libm's scalar `erf`
//! and `exp` were 9% of a UNet sample (GELU over every feed-forward
//! hidden unit). `one_plus_erf` uses the Chebyshev-fitted erfc of
//! Press et al. (Numerical Recipes, `erfcc`: fractional error below 1.2e-7
//! for every argument) on |z|, so 1 + erf(z) keeps its relative accuracy
//! where it is tiny (z << 0) instead of cancelling; `exp` is the softmax's
//! branch-free one. Both are straight-line code the compiler vectorises;
//! the GEGLU op runs its rows in the active SIMD path's build
//! (`simd::Simd::vectorize`).

use super::exp_poly::exp_f32;

/// 1 + erf(z), branch-free.
#[inline(always)]
pub fn one_plus_erf_f32(z: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = 0.170_872_77f32;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    let erfc = t * exp_f32(p - a * a);
    if z >= 0.0 {
        2.0 - erfc
    } else {
        erfc
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// y = h gelu(a), gelu(a) = a Phi(a) (the exact-erf GELU).
#[inline(always)]
pub fn geglu_row(y: &mut [f32], h: &[f32], a: &[f32]) {
    for ((o, &hv), &av) in y.iter_mut().zip(h).zip(a) {
        *o = hv * (one_plus_erf_f32(av * FRAC_1_SQRT_2) * 0.5 * av);
    }
}

/// dh = g gelu(a), da = g h (Phi(a) + a phi(a)).
#[inline(always)]
pub fn geglu_grad_row(dh: &mut [f32], da: &mut [f32], h: &[f32], a: &[f32], g: &[f32]) {
    for i in 0..a.len().min(h.len()).min(g.len()).min(dh.len()).min(da.len()) {
        let av = a[i];
        let cdf = one_plus_erf_f32(av * FRAC_1_SQRT_2) * 0.5;
        let pdf = exp_f32(-0.5 * av * av) * FRAC_1_SQRT_2PI;
        dh[i] = g[i] * (cdf * av);
        da[i] = g[i] * h[i] * (cdf + av * pdf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_plus_erf_keeps_its_relative_accuracy_everywhere() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            // The f32 argument exactly: its rounding alone moves erfc(9) by 1e-5.
            let z = (-9.0 + 18.0 * i as f64 / 200_000.0) as f32 as f64;
            let want = 1.0 + candle_core::cpu::erf::erf_f64(z);
            let want = if z < -3.0 { candle_core::cpu::erf::erfc_f64(-z) } else { want };
            let got = one_plus_erf_f32(z as f32) as f64;
            // erfcc's 1.2e-7 and the f32 exp, plus the rounding of z^2 in f32
            // (half an ulp of 81 is 4e-6 at z = 9), which the exp carries.
            let tol = 2e-6 + 1.5e-7 * z * z;
            if want > 1e-30 {
                worst = worst.max(((got - want) / want).abs() / tol);
            }
        }
        assert!(worst < 1.0, "worst error {worst} of the tolerance");
        assert_eq!(one_plus_erf_f32(f32::INFINITY), 2.0);
        assert!((0.0..1e-37).contains(&one_plus_erf_f32(-100.0)));
    }

    #[test]
    fn every_build_gives_the_same_rows() {
        use crate::ops::cpu::simd::{Path, Simd};
        let a: Vec<f32> = (0..301).map(|i| (i as f32 - 150.0) * 0.047).collect();
        let h: Vec<f32> = (0..301).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.3).collect();
        let g: Vec<f32> = (0..301).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
        let (mut y0, mut dh0, mut da0) = (vec![0f32; 301], vec![0f32; 301], vec![0f32; 301]);
        geglu_row(&mut y0, &h, &a);
        geglu_grad_row(&mut dh0, &mut da0, &h, &a, &g);
        for path in Path::supported() {
            let (mut y1, mut dh1, mut da1) = (vec![0f32; 301], vec![0f32; 301], vec![0f32; 301]);
            Simd::new(path).unwrap().vectorize(#[inline(always)] || {
                geglu_row(&mut y1, &h, &a);
                geglu_grad_row(&mut dh1, &mut da1, &h, &a, &g);
            });
            // Rust never contracts a * b + c into an FMA, and the rows have
            // no reductions: every build gives the same bits.
            assert_eq!((&y0, &dh0, &da0), (&y1, &dh1, &da1), "{path}");
        }
        for i in 0..301 {
            // And the math: GELU(a) = a Phi(a) with libm.
            let av = a[i] as f64;
            let gelu = av * 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(av / 2f64.sqrt()));
            assert!((y0[i] as f64 - h[i] as f64 * gelu).abs() < 2e-6, "element {i}: {} vs {}", y0[i], h[i] as f64 * gelu);
        }
    }
}
