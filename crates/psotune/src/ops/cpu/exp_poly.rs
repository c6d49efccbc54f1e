//! A branch-free f32 exp (Cephes' expf polynomial: range reduction by
//! ln 2, a degree-6 polynomial, the exponent built in the bits; within 2 ulp
//! of libm for the arguments softmax produces). A scalar libm `exp` per
//! attention score once made softmax 56% of a UNet sample; this one
//! vectorises when called in a loop (GEGLU's erf, plain lanes of
//! `lanes::Plain`), and `lanes` repeats it with AVX-512 / AVX2 intrinsics.

/// ln 2 in two parts (the high one exact in few bits), for the range
/// reduction r = x - n ln 2.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// exp(r) = 1 + r + r^2 p(r) on |r| <= ln 2 / 2, p's coefficients from the
/// highest power down (Cephes: the last is 5.0000001201e-1, 0.5 in f32).
pub const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// exp(x) for x in [-87, 88] (softmax arguments are <= 0; smaller ones
/// are clamped, which changes results only below 1e-38).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    // with plain SSE2 arithmetic (f32::round would be a libm call).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer, read from t's mantissa: a float-to-int cast would
    // be a saturating scalar conversion per lane and stop vectorisation.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((ni.wrapping_add(127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_2_ulp_over_the_clamped_range() {
        // Softmax arguments (<= 0) and the sigmoid's (both signs).
        let mut worst = 0f32;
        for i in 0..400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let (a, b) = (exp_f32(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(-1000.0) >= 0.0);
    }
}
