//! The float types the CPU kernels run in (f32, f64): element math stays in
//! the input's precision; only long sums are widened (see `reduce`).

use candle_core::{CpuStorage, WithDType};

pub trait Real: WithDType {
    fn sqrt(self) -> Self;
    /// exp for arguments in [-87, 88] (softmax, sigmoid): f32 takes the
    /// branch-free polynomial of `exp_poly` (it vectorises), f64 keeps libm.
    fn exp_lane(self) -> Self;
    /// libm's erf, the function candle's `gelu_erf` kernel calls, so fused
    /// GELU forwards equal candle's bit for bit.
    fn erf(self) -> Self;
    /// One GEGLU row, y = h gelu(a) (exact-erf GELU).
    fn geglu_row(y: &mut [Self], h: &[Self], a: &[Self]);
    /// One GEGLU gradient row: dh = g gelu(a), da = g h GELU'(a).
    fn geglu_grad_row(dh: &mut [Self], da: &mut [Self], h: &[Self], a: &[Self], g: &[Self]);
    const FRAC_1_SQRT_2: Self;
    /// 1 / sqrt(2 pi): the normal density's constant.
    const FRAC_1_SQRT_2PI: Self;
    /// The storage's data, when it holds this type.
    fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

// Everything here is `inline(always)`: the kernels call these inside the
// SIMD builds of `simd`, and a call that is not inlined runs without the
// build's features.
impl Real for f32 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn exp_lane(self) -> Self {
        super::exp_poly::exp_f32(self)
    }
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f32(self)
    }
    /// Vectorised, without libm (`erf_fast`): within 2e-6 of libm.
    #[inline(always)]
    fn geglu_row(y: &mut [Self], h: &[Self], a: &[Self]) {
        super::erf_fast::geglu_row(y, h, a)
    }
    #[inline(always)]
    fn geglu_grad_row(dh: &mut [Self], da: &mut [Self], h: &[Self], a: &[Self], g: &[Self]) {
        super::erf_fast::geglu_grad_row(dh, da, h, a, g)
    }
    fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v.as_mut_slice()),
            _ => None,
        }
    }
    const FRAC_1_SQRT_2: Self = std::f32::consts::FRAC_1_SQRT_2;
    const FRAC_1_SQRT_2PI: Self = 0.398_942_3;
}

impl Real for f64 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn exp_lane(self) -> Self {
        f64::exp(self)
    }
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
    /// f64 (gradient checks) keeps libm's erf and exp, candle's GELU
    /// expression: exactness over speed.
    #[inline(always)]
    fn geglu_row(y: &mut [Self], h: &[Self], a: &[Self]) {
        for ((o, &hv), &av) in y.iter_mut().zip(h).zip(a) {
            *o = hv * ((Real::erf(av * Self::FRAC_1_SQRT_2) + 1.0) * 0.5 * av);
        }
    }
    #[inline(always)]
    fn geglu_grad_row(dh: &mut [Self], da: &mut [Self], h: &[Self], a: &[Self], g: &[Self]) {
        for i in 0..a.len() {
            let cdf = (Real::erf(a[i] * Self::FRAC_1_SQRT_2) + 1.0) * 0.5;
            let pdf = (-0.5 * a[i] * a[i]).exp() * Self::FRAC_1_SQRT_2PI;
            dh[i] = g[i] * (cdf * a[i]);
            da[i] = g[i] * h[i] * (cdf + a[i] * pdf);
        }
    }
    fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v.as_mut_slice()),
            _ => None,
        }
    }
    const FRAC_1_SQRT_2: Self = std::f64::consts::FRAC_1_SQRT_2;
    const FRAC_1_SQRT_2PI: Self = 0.398_942_280_401_432_7;
}

/// The logistic function. f32 takes the branch-free exp (a libm call per
/// element was 3% of a UNet sample, in group norm + SiLU); its clamp to
/// [-87, 88] changes only results below 1e-38.
#[inline(always)]
pub fn sigmoid<T: Real>(v: T) -> T {
    T::one() / (T::one() + (T::zero() - v).exp_lane())
}
