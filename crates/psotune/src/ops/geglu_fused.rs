//! GEGLU's gating as one CPU custom op: `hidden * gelu(gate)` with the
//! projection output split in half on the last dimension.
//!
//! Composed (`activation::geglu_composed`), the two halves are strided
//! views: the GELU, its backward (erf, exp, four products) and the product
//! each make a full-size temporary, and the gradients of the two halves are
//! scattered back into the projection's shape by further copies. This op
//! reads the projection once and writes its gradient once:
//!
//!   out   = h gelu(a)                   gelu(a) = a Phi(a)
//!   dh    = g gelu(a)
//!   da    = g h (Phi(a) + a phi(a))
//!
//! In f64 the forward is candle's own GELU expression, equal to the
//! composed version bit for bit; in f32 the row math is vectorised without
//! libm (`cpu::erf_fast`), within 2e-6 of it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::activation::geglu_composed;
use super::cpu::real::Real;
use super::cpu::simd::Simd;
use super::cpu::{rows_per_task, slice_of, with_slice};

const TASK_ELEMS: usize = 1 << 14;

/// GEGLU's gating (diffusers `GEGLU` after its projection): the projection
/// output is split in half on the last dim, `hidden * gelu(gate)` (exact
/// erf GELU). f32 / f64 on the CPU run the fused kernel of this module.
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    let n = projected.dim(D::Minus1)?;
    if n % 2 != 0 {
        candle_core::bail!("geglu needs an even last dimension, got {n}");
    }
    let fast = projected.device().is_cpu() && matches!(projected.dtype(), DType::F32 | DType::F64) && n > 0;
    if !fast {
        return geglu_composed(projected);
    }
    projected.contiguous()?.apply_op1(GegluOp { half: n / 2, simd: Simd::active() })
}

struct GegluOp {
    half: usize,
    /// The SIMD path, read on the thread that made the op.
    simd: Simd,
}

impl GegluOp {
    fn forward<T: Real>(&self, p: &[T]) -> Vec<T> {
        let n = self.half;
        let mut y = vec![T::zero(); p.len() / 2];
        let rows = rows_per_task(2 * n, TASK_ELEMS);
        y.par_chunks_mut(rows * n).zip(p.par_chunks(rows * 2 * n)).for_each(|(yt, pt)| {
            self.simd.vectorize(#[inline(always)] || {
                for (yr, pr) in yt.chunks_mut(n).zip(pt.chunks(2 * n)) {
                    let (h, a) = pr.split_at(n);
                    T::geglu_row(yr, h, a);
                }
            })
        });
        y
    }

    fn backward<T: Real>(&self, p: &[T], g: &[T]) -> Vec<T> {
        let n = self.half;
        let mut dp = vec![T::zero(); p.len()];
        let rows = rows_per_task(2 * n, TASK_ELEMS);
        dp.par_chunks_mut(rows * 2 * n).zip(p.par_chunks(rows * 2 * n)).zip(g.par_chunks(rows * n)).for_each(|((dt, pt), gt)| {
            self.simd.vectorize(#[inline(always)] || {
                for ((dr, pr), gr) in dt.chunks_mut(2 * n).zip(pt.chunks(2 * n)).zip(gt.chunks(n)) {
                    let (h, a) = pr.split_at(n);
                    let (dh, da) = dr.split_at_mut(n);
                    T::geglu_grad_row(dh, da, h, a, gr);
                }
            })
        });
        dp
    }
}

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "psotune-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.half;
        }
        let storage = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice_of::<f32>(s, l)?)),
            DType::F64 => CpuStorage::F64(self.forward(slice_of::<f64>(s, l)?)),
            d => candle_core::bail!("geglu: no CPU kernel for {d:?}"),
        };
        Ok((storage, Shape::from(dims)))
    }

    fn bwd(&self, p: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        let dp = match p.dtype() {
            DType::F32 => Tensor::from_vec(with_slice::<f32, _>(p, |ps| with_slice::<f32, _>(&g, |gs| Ok(self.backward(ps, gs))))?, p.shape(), p.device())?,
            DType::F64 => Tensor::from_vec(with_slice::<f64, _>(p, |ps| with_slice::<f64, _>(&g, |gs| Ok(self.backward(ps, gs))))?, p.shape(), p.device())?,
            d => candle_core::bail!("geglu: no CPU kernel for {d:?}"),
        };
        Ok(Some(dp))
    }
}
