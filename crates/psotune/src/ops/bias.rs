//! Bias addition over the last dimension as a CPU custom op.
//!
//! `y.broadcast_add(b)` is cheap forward, but candle's backward reduces the
//! gradient over every leading dimension with a strided sum that walks the
//! [rows, n] gradient column by column; on the emoji UNet that reduction
//! was the largest single cost after the convolutions. Here the bias
//! gradient is a row-order column sum (f64, fixed task order) instead.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

use super::cpu::simd::Simd;
use super::cpu::{rows_per_task, slice_of, with_slice};

const TASK_ELEMS: usize = 1 << 15;

/// `y + b` with `b` of the size of `y`'s last dimension (a Linear's bias).
pub fn bias_add_last(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = y.dim(D::Minus1)?;
    if b.dims() != [n] {
        candle_core::bail!("bias_add: bias {:?} does not match the last dimension of {:?}", b.dims(), y.dims());
    }
    let fast = y.device().is_cpu() && b.dtype() == y.dtype() && matches!(y.dtype(), DType::F32 | DType::F64) && n > 0;
    if !fast {
        return y.broadcast_add(b);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd { n, simd: Simd::active() })
}

struct BiasAdd {
    n: usize,
    /// The SIMD path, read on the thread that made the op.
    simd: Simd,
}

impl BiasAdd {
    fn forward<T: WithDType>(&self, y: &[T], b: &[T]) -> Vec<T> {
        let mut out = y.to_vec();
        let task = rows_per_task(self.n, TASK_ELEMS) * self.n;
        out.par_chunks_mut(task).for_each(|t| {
            self.simd.vectorize(#[inline(always)] || {
                for row in t.chunks_mut(self.n) {
                    for (o, &v) in row.iter_mut().zip(b) {
                        *o += v;
                    }
                }
            })
        });
        out
    }

    /// Column sums of the gradient: lanes of T per task, f64 across tasks.
    fn column_sums<T: WithDType>(&self, g: &[T]) -> Vec<T> {
        let n = self.n;
        let task = rows_per_task(n, TASK_ELEMS) * n;
        let partials: Vec<Vec<T>> = g
            .par_chunks(task)
            .map(|t| {
                self.simd.vectorize(#[inline(always)] || {
                    let mut acc = vec![T::zero(); n];
                    for row in t.chunks(n) {
                        for (a, &v) in acc.iter_mut().zip(row) {
                            *a += v;
                        }
                    }
                    acc
                })
            })
            .collect();
        let mut sum = vec![0f64; n];
        for p in &partials {
            for (s, v) in sum.iter_mut().zip(p) {
                *s += v.to_f64();
            }
        }
        sum.into_iter().map(T::from_f64).collect()
    }
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "psotune-bias-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?)),
            DType::F64 => CpuStorage::F64(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?)),
            d => candle_core::bail!("bias_add: no CPU kernel for {d:?}"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(&self, _y: &Tensor, b: &Tensor, _out: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gb = if b.track_op() {
            let g = g.contiguous()?;
            let sums = match g.dtype() {
                DType::F32 => Tensor::from_vec(with_slice::<f32, _>(&g, |gs| Ok(self.column_sums(gs)))?, b.shape(), b.device())?,
                DType::F64 => Tensor::from_vec(with_slice::<f64, _>(&g, |gs| Ok(self.column_sums(gs)))?, b.shape(), b.device())?,
                d => candle_core::bail!("bias_add: no CPU kernel for {d:?}"),
            };
            Some(sums)
        } else {
            None
        };
        Ok((Some(g.clone()), gb))
    }
}
