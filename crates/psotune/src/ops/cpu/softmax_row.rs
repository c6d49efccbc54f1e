//! The row softmax of the attention kernel, which on small heads (d = 4-8,
//! a thousand keys) costs more than both matrix products: a scalar libm
//! `exp` per score made it 56% of a UNet sample. For f32 this is a
//! branch-free exp (Cephes' expf polynomial: range reduction by ln 2, a
//! degree-6 polynomial, the exponent built in the bits; within 2 ulp of
//! libm for the arguments softmax produces) in 8 independent lanes that the
//! compiler vectorises, compiled three times and picked at run time:
//! AVX-512 (16 lanes, one zmm register) or AVX2 + FMA (8 lanes) where the
//! CPU has them, else the baseline SSE2 build (8 lanes).

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
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((ni.wrapping_add(127) << 23) as u32)
}

/// The softmax of one row in `LANES` independent lanes (the lane count
/// sets the summation order, so each build is deterministic on its own).
#[inline(always)]
fn body<const LANES: usize>(row: &mut [f32], scale: f32) {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (v, m) in c.iter_mut().zip(maxes.iter_mut()) {
            *v *= scale;
            *m = if *v > *m { *v } else { *m };
        }
    }
    let mut max = maxes.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for v in chunks.into_remainder() {
        *v *= scale;
        if *v > max {
            max = *v;
        }
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (v, s) in c.iter_mut().zip(sums.iter_mut()) {
            *v = exp_f32(*v - max);
            *s += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2(row: &mut [f32], scale: f32) {
    body::<8>(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn body_avx512(row: &mut [f32], scale: f32) {
    body::<16>(row, scale)
}

/// In place: row <- softmax(row * scale).
pub fn softmax_row_f32(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for.
            unsafe { body_avx512(row, scale) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for.
            unsafe { body_avx2(row, scale) };
            return;
        }
    }
    body::<8>(row, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_2_ulp_over_the_softmax_range() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + 87.5 * i as f32 / 200_000.0;
            let (a, b) = (exp_f32(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(-1000.0) >= 0.0);
    }

    #[test]
    fn softmax_rows_match_the_plain_formula() {
        for len in [1, 7, 8, 13, 64, 1031] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.9).collect();
            let mut fast = row.clone();
            softmax_row_f32(&mut fast, 0.5);
            let max = row.iter().map(|v| v * 0.5).fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = row.iter().map(|v| ((v * 0.5 - max) as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (f, e) in fast.iter().zip(&e) {
                assert!((*f as f64 - e / sum).abs() < 1e-6, "len {len}: {f} vs {}", e / sum);
            }
            let mut base = row.clone();
            body::<8>(&mut base, 0.5);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                let mut avx2 = row.clone();
                // SAFETY: the features were just detected.
                unsafe { body_avx2(&mut avx2, 0.5) };
                assert_eq!(base, avx2, "the AVX2 and baseline builds agree bit for bit");
            }
            let mut wide = row.clone();
            body::<16>(&mut wide, 0.5);
            for (a, b) in base.iter().zip(&wide) {
                assert!((a - b).abs() <= 1e-6 * a.abs() + 1e-12, "len {len}: 8 vs 16 lanes {a} vs {b}");
            }
        }
    }
}
