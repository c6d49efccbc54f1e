//! AdamW's update of one parameter in one pass, in place (CPU, f32 / f64).
//!
//! The tensor-op version (`optim::update_composed`) makes about a dozen
//! full-size temporaries per parameter per step and writes the parameter
//! through `Var::set`, a further copy; for the emoji UNet's 496 tensors that
//! was most of the optimizer's time. Here one loop reads p, g, m, v and
//! writes p, m, v, evaluating the *same* expressions in the same order and
//! precision as the tensor ops (candle's `affine(mul, add)` is `x * mul +
//! add` with both scalars cast to the element type), so both paths give
//! bit-identical results.

use candle_core::{DType, Result, Tensor};

use super::optim::Hyper;
use crate::ops::cpu::real::Real;
use crate::ops::cpu::simd::Simd;
use crate::ops::cpu::{with_slice, with_slice_mut};

/// Whether [`update`] handles these tensors: all on the CPU, one float
/// dtype with a kernel, contiguous.
pub(crate) fn applies(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let dt = p.dtype();
    [p, g, m, v].iter().all(|t| t.device().is_cpu() && t.dtype() == dt && t.layout().contiguous_offsets().is_some())
        && matches!(dt, DType::F32 | DType::F64)
}

/// One AdamW step of parameter `p` with gradient `g`, moments `m` and `v`
/// updated in place.
pub(crate) fn update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &Hyper) -> Result<()> {
    match p.dtype() {
        DType::F32 => update_typed::<f32>(p, g, m, v, h),
        DType::F64 => update_typed::<f64>(p, g, m, v, h),
        d => candle_core::bail!("adamw: no CPU kernel for {d:?}"),
    }
}

fn update_typed<T: Real>(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &Hyper) -> Result<()> {
    with_slice_mut::<T, _>(p, |ps| {
        with_slice_mut::<T, _>(m, |ms| {
            with_slice_mut::<T, _>(v, |vs| {
                with_slice::<T, _>(g, |gs| {
                    if ps.len() != gs.len() || ms.len() != gs.len() || vs.len() != gs.len() {
                        candle_core::bail!("adamw: parameter, gradient and moments differ in size");
                    }
                    Simd::active().vectorize(#[inline(always)] || step_slices(ps, gs, ms, vs, h));
                    Ok(())
                })
            })
        })
    })
}

/// The arithmetic, element by element; each line is one tensor op of
/// `update_composed` (a `+ zero` is the add of `affine(mul, 0.0)`).
/// Every SIMD build vectorises the same per-element expressions (no FMA
/// contraction in Rust), so all of them equal the tensor ops bit for bit.
#[inline(always)]
pub(crate) fn step_slices<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: &Hyper) {
    let c = |x: f64| T::from_f64(x);
    let (decay, b1, b2) = (c(h.decay), c(1.0 - h.beta1), c(h.beta2));
    let (nb2, bc2, eps, step, zero) = (c(1.0 - h.beta2), c(h.bias_correction2_sqrt), c(h.eps), c(h.step_size), T::zero());
    let decayed = h.weight_decay != 0.0;
    for i in 0..p.len() {
        let gi = g[i];
        let pi = if decayed { p[i] * decay + zero } else { p[i] };
        let mi = m[i] + ((gi - m[i]) * b1 + zero);
        let vi = (v[i] * b2 + zero) + ((gi * gi) * nb2 + zero);
        let denom = vi.sqrt() / bc2 * T::one() + eps;
        p[i] = pi - ((mi / denom) * step + zero);
        m[i] = mi;
        v[i] = vi;
    }
}
