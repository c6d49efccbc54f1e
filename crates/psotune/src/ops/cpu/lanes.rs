//! Sixteen lanes of a float type as one value, so that the register-tiled
//! kernels of `attn_tiles` are written once and compiled to AVX-512 (one
//! zmm register), AVX2 + FMA (two ymm registers) or plain arrays.
//!
//! Auto-vectorisation does not survive those tiles: a tile of 8 x 32 sums
//! is an array the compiler keeps on the stack and updates one scalar FMA
//! at a time (measured: 7x slower than the gemm path it replaced). Explicit
//! vectors keep every sum in a register.
//!
//! Safety contract: the AVX types may only be used by code that runs after
//! the CPU was found to have their features, inside functions compiled with
//! them (the `kernels` dispatch of `attention_heads`); their methods are
//! `inline(always)` so that the intrinsics are inlined there.

use super::real::Real;

/// The lane count of every [`Lanes`] type.
pub const WIDTH: usize = 16;

pub trait Lanes<T: Real>: Copy {
    /// How many values of this type a register tile may keep as sums: the
    /// tiles of `attn_tiles` pick their shape from it, so that the sums, the
    /// loaded operands and a broadcast all stay in registers. AVX-512 has
    /// 32 zmm registers of 16 lanes (16 sums); AVX2 has 16 ymm registers of
    /// 8, so a value takes two and 6 sums (12 registers) is the most that
    /// leaves room for the operands: tiles sized for AVX-512 spilled there
    /// and ran at the portable path's speed per lane.
    const ACC: usize;
    fn zero() -> Self;
    fn splat(x: T) -> Self;
    /// The first [`WIDTH`] elements of `s` (panics if it is shorter).
    fn load(s: &[T]) -> Self;
    /// Into the first [`WIDTH`] elements of `s` (panics if it is shorter).
    fn store(self, s: &mut [T]);
    /// self + x * y, fused where the type has FMA.
    fn mul_add(self, x: Self, y: Self) -> Self;
    fn mul(self, x: Self) -> Self;
    fn add(self, x: Self) -> Self;
    fn max(self, x: Self) -> Self;
    /// The sum of the lanes.
    fn sum(self) -> T;
    /// The largest lane.
    fn hmax(self) -> T;
    /// exp of each lane, for softmax arguments (<= 0; below -87 the result
    /// is exp(-87)): the polynomial of `exp_poly::exp_f32`.
    fn exp(self) -> Self;
}

/// Plain arrays: f64 (gradient checks) and CPUs without AVX2 + FMA.
#[derive(Clone, Copy)]
pub struct Plain<T>([T; WIDTH]);

impl<T: Real> Lanes<T> for Plain<T> {
    /// 16 lanes are four SSE (or NEON) registers: 3 sums take 12 of 16.
    const ACC: usize = 3;
    #[inline(always)]
    fn zero() -> Self {
        Plain([T::zero(); WIDTH])
    }
    #[inline(always)]
    fn splat(x: T) -> Self {
        Plain([x; WIDTH])
    }
    #[inline(always)]
    fn load(s: &[T]) -> Self {
        let mut a = [T::zero(); WIDTH];
        a.copy_from_slice(&s[..WIDTH]);
        Plain(a)
    }
    #[inline(always)]
    fn store(self, s: &mut [T]) {
        s[..WIDTH].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn mul_add(self, x: Self, y: Self) -> Self {
        let mut a = self.0;
        for ((o, &xv), &yv) in a.iter_mut().zip(&x.0).zip(&y.0) {
            *o += xv * yv;
        }
        Plain(a)
    }
    #[inline(always)]
    fn mul(self, x: Self) -> Self {
        let mut a = self.0;
        for (o, &xv) in a.iter_mut().zip(&x.0) {
            *o *= xv;
        }
        Plain(a)
    }
    #[inline(always)]
    fn add(self, x: Self) -> Self {
        let mut a = self.0;
        for (o, &xv) in a.iter_mut().zip(&x.0) {
            *o += xv;
        }
        Plain(a)
    }
    #[inline(always)]
    fn max(self, x: Self) -> Self {
        let mut a = self.0;
        for (o, &xv) in a.iter_mut().zip(&x.0) {
            *o = if xv > *o { xv } else { *o };
        }
        Plain(a)
    }
    #[inline(always)]
    fn sum(self) -> T {
        self.0.iter().fold(T::zero(), |a, &b| a + b)
    }
    #[inline(always)]
    fn hmax(self) -> T {
        self.0.iter().fold(self.0[0], |a, &b| if b > a { b } else { a })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        let mut a = self.0;
        for o in a.iter_mut() {
            *o = o.exp_lane();
        }
        Plain(a)
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use std::f32::consts::LOG2_E as LOG2E;

    use crate::ops::cpu::exp_poly::{LN2_HI, LN2_LO, POLY as P};
    use super::{Lanes, WIDTH};

    /// One zmm register of f32.
    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl Lanes<f32> for Avx512 {
        const ACC: usize = 16;
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: see the module's contract (AVX-512F detected).
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: as above.
            Avx512(unsafe { _mm512_set1_ps(x) })
        }
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            let s = &s[..WIDTH];
            // SAFETY: 16 readable f32 (checked above); unaligned load.
            Avx512(unsafe { _mm512_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            let s = &mut s[..WIDTH];
            // SAFETY: 16 writable f32 (checked above); unaligned store.
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn mul_add(self, x: Self, y: Self) -> Self {
            // SAFETY: as above.
            Avx512(unsafe { _mm512_fmadd_ps(x.0, y.0, self.0) })
        }
        #[inline(always)]
        fn mul(self, x: Self) -> Self {
            // SAFETY: as above.
            Avx512(unsafe { _mm512_mul_ps(self.0, x.0) })
        }
        #[inline(always)]
        fn add(self, x: Self) -> Self {
            // SAFETY: as above.
            Avx512(unsafe { _mm512_add_ps(self.0, x.0) })
        }
        #[inline(always)]
        fn max(self, x: Self) -> Self {
            // SAFETY: as above.
            Avx512(unsafe { _mm512_max_ps(self.0, x.0) })
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            // SAFETY: as above.
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
        #[inline(always)]
        fn hmax(self) -> f32 {
            // SAFETY: as above.
            unsafe { _mm512_reduce_max_ps(self.0) }
        }
        #[inline(always)]
        fn exp(self) -> Self {
            // SAFETY: as above. n = round(x log2 e) (to nearest, no
            // exceptions), r = x - n ln 2 in two parts, exp(r) by the
            // polynomial, times 2^n by `scalef`.
            unsafe {
                let x = _mm512_max_ps(self.0, _mm512_set1_ps(-87.0));
                let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)));
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x));
                let mut p = _mm512_set1_ps(P[0]);
                for &c in &P[1..] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
                }
                let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
                Avx512(_mm512_scalef_ps(y, n))
            }
        }
    }

    /// Two ymm registers of f32.
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl Lanes<f32> for Avx2 {
        const ACC: usize = 6;
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: see the module's contract (AVX2 + FMA detected).
            unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: as above.
            unsafe { Avx2(_mm256_set1_ps(x), _mm256_set1_ps(x)) }
        }
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            let s = &s[..WIDTH];
            // SAFETY: 16 readable f32 (checked above); unaligned loads.
            unsafe { Avx2(_mm256_loadu_ps(s.as_ptr()), _mm256_loadu_ps(s.as_ptr().add(8))) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            let s = &mut s[..WIDTH];
            // SAFETY: 16 writable f32 (checked above); unaligned stores.
            unsafe {
                _mm256_storeu_ps(s.as_mut_ptr(), self.0);
                _mm256_storeu_ps(s.as_mut_ptr().add(8), self.1);
            }
        }
        #[inline(always)]
        fn mul_add(self, x: Self, y: Self) -> Self {
            // SAFETY: as above.
            unsafe { Avx2(_mm256_fmadd_ps(x.0, y.0, self.0), _mm256_fmadd_ps(x.1, y.1, self.1)) }
        }
        #[inline(always)]
        fn mul(self, x: Self) -> Self {
            // SAFETY: as above.
            unsafe { Avx2(_mm256_mul_ps(self.0, x.0), _mm256_mul_ps(self.1, x.1)) }
        }
        #[inline(always)]
        fn add(self, x: Self) -> Self {
            // SAFETY: as above.
            unsafe { Avx2(_mm256_add_ps(self.0, x.0), _mm256_add_ps(self.1, x.1)) }
        }
        #[inline(always)]
        fn max(self, x: Self) -> Self {
            // SAFETY: as above.
            unsafe { Avx2(_mm256_max_ps(self.0, x.0), _mm256_max_ps(self.1, x.1)) }
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            // SAFETY: as above.
            unsafe { hsum8(_mm256_add_ps(self.0, self.1)) }
        }
        #[inline(always)]
        fn hmax(self) -> f32 {
            // SAFETY: as above.
            unsafe {
                let m = _mm256_max_ps(self.0, self.1);
                let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)))
            }
        }
        #[inline(always)]
        fn exp(self) -> Self {
            // SAFETY: as above.
            unsafe { Avx2(exp8(self.0), exp8(self.1)) }
        }
    }

    /// The sum of 8 lanes (as `_mm512_reduce_add_ps` pairs them: halves,
    /// then quarters, then the last two).
    #[inline(always)]
    unsafe fn hsum8(x: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }

    /// exp of 8 lanes, as `Avx512::exp` with 2^n built in the exponent bits
    /// (n is in [-126, 0] for x in [-87, 0]). A named `inline(always)`
    /// function, not a closure: a closure does not take the caller's target
    /// features, so its intrinsics became calls (issue 16).
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<0x08>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x));
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}
