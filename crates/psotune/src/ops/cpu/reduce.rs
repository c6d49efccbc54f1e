//! Reductions that vectorise and stay accurate over long runs.

use candle_core::WithDType;

/// Sum of `f` over the elements, in 8 independent lanes of `T` (so the
/// compiler can vectorise) flushed to f64 every 1024 elements (so long
/// blocks lose no precision). `inline(always)`: the norms call it inside
/// their SIMD builds.
#[inline(always)]
pub fn lane_sum<T: WithDType>(xs: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut total = 0f64;
    for chunk in xs.chunks(1024) {
        let mut lanes = [T::zero(); 8];
        let mut it = chunk.chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                lanes[l] += f(c[l]);
            }
        }
        total += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
        total += it.remainder().iter().map(|&v| f(v).to_f64()).sum::<f64>();
    }
    total
}
