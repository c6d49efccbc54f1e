//! Layer norm over the last dimension as one CPU custom op.
//!
//! The composed version (`norm::layer_norm_composed`) makes about eight
//! full-size temporaries (centring, squares, division, affine) and keeps
//! them for candle's backward; each transformer block has three of these
//! norms. This op reads x once for the statistics and once for the output;
//! its backward recomputes the statistics from x. With
//! x^ = (x - mean) rstd and g the gradient of y = x^ gamma + beta, per row:
//!
//!   dx = rstd (g gamma - mean(g gamma) - x^ mean(g gamma x^))
//!
//! and dgamma = sum_rows g x^, dbeta = sum_rows g (the formula of PyTorch's
//! `layer_norm_backward_cpu`). Row sums accumulate in f64.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::real::Real;
use super::cpu::reduce::lane_sum;
use super::cpu::simd::Simd;
use super::cpu::{rows_per_task, slice_of, with_slice};
use super::norm::layer_norm_composed;

/// Elements per parallel task.
const TASK_ELEMS: usize = 1 << 14;

/// `torch.nn.functional.layer_norm` over the last dimension, then scale and
/// shift (weights of the last dimension's size). f32 / f64 on the CPU run
/// the fused kernel of this module; other dtypes and devices the composed
/// version (statistics in f32 for half precision, as PyTorch).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let dim = x.dims().last().copied().unwrap_or(0);
    let same = |t: &Tensor| t.dtype() == dt && t.dims() == [dim];
    let fast = x.device().is_cpu() && matches!(dt, DType::F32 | DType::F64) && same(weight) && bias.is_none_or(same) && dim > 0;
    if !fast {
        return layer_norm_composed(x, weight, bias, eps);
    }
    // A missing bias is a zero constant: it gets a gradient nobody reads.
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(dim, dt, x.device())?,
    };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias, LayerNormOp { dim, eps, simd: Simd::active() })
}

struct LayerNormOp {
    dim: usize,
    eps: f64,
    /// The SIMD path, read on the thread that made the op.
    simd: Simd,
}

/// (mean, 1 / sqrt(var + eps)) of one row, biased variance, two passes.
#[inline(always)]
fn stats<T: Real>(xs: &[T], eps: f64) -> (T, T) {
    let n = xs.len() as f64;
    let mean = lane_sum(xs, |v| v) / n;
    let m = T::from_f64(mean);
    let var = lane_sum(xs, |v| (v - m) * (v - m)) / n;
    (m, T::from_f64(1.0 / (var + eps).sqrt()))
}

impl LayerNormOp {
    fn forward<T: Real>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let d = self.dim;
        let mut y = vec![T::zero(); x.len()];
        let task = rows_per_task(d, TASK_ELEMS) * d;
        y.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(yt, xt)| {
            self.simd.vectorize(#[inline(always)] || {
                for (yr, xr) in yt.chunks_mut(d).zip(xt.chunks(d)) {
                    let (mean, rstd) = stats(xr, self.eps);
                    for (((o, &v), &gm), &bt) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                        *o = (v - mean) * rstd * gm + bt;
                    }
                }
            })
        });
        y
    }

    /// (dx, dgamma, dbeta) from x and the output gradient `gy`.
    fn backward<T: Real>(&self, x: &[T], gamma: &[T], gy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let d = self.dim;
        let mut dx = vec![T::zero(); x.len()];
        let task = rows_per_task(d, TASK_ELEMS) * d;
        // Per task: (sum g x^, sum g) per column, added in task order below
        // so the result does not depend on scheduling.
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .zip(gy.par_chunks(task))
            .map(|((dxt, xt), gt)| self.simd.vectorize(#[inline(always)] || {
                let (mut dg, mut db) = (vec![0f64; d], vec![0f64; d]);
                let mut xhat = vec![T::zero(); d];
                for ((dxr, xr), gr) in dxt.chunks_mut(d).zip(xt.chunks(d)).zip(gt.chunks(d)) {
                    let (mean, rstd) = stats(xr, self.eps);
                    let (mut a, mut b) = (0f64, 0f64);
                    for i in 0..d {
                        let xh = (xr[i] - mean) * rstd;
                        xhat[i] = xh;
                        let gg = gr[i] * gamma[i];
                        a += gg.to_f64();
                        b += (gg * xh).to_f64();
                        dg[i] += (gr[i] * xh).to_f64();
                        db[i] += gr[i].to_f64();
                    }
                    let n = d as f64;
                    let (a, b) = (T::from_f64(a / n), T::from_f64(b / n));
                    for i in 0..d {
                        dxr[i] = rstd * (gr[i] * gamma[i] - a - xhat[i] * b);
                    }
                }
                (dg, db)
            }))
            .collect();
        let (mut dg, mut db) = (vec![0f64; d], vec![0f64; d]);
        for (pg, pb) in &partials {
            for i in 0..d {
                dg[i] += pg[i];
                db[i] += pb[i];
            }
        }
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
        (dx, cast(dg), cast(db))
    }

    fn bwd_typed<T: Real>(&self, x: &Tensor, w: &Tensor, b: &Tensor, gy: &Tensor) -> Result<[Tensor; 3]> {
        let gy = gy.contiguous()?;
        let (dx, dg, db) = with_slice::<T, _>(x, |xs| with_slice::<T, _>(w, |ws| with_slice::<T, _>(&gy, |gs| Ok(self.backward(xs, ws, gs)))))?;
        Ok([
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dg, w.shape(), w.device())?,
            Tensor::from_vec(db, b.shape(), b.device())?,
        ])
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "psotune-layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            DType::F64 => CpuStorage::F64(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            d => candle_core::bail!("layer_norm: no CPU kernel for {d:?}"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(x, w, b, gy)?,
            DType::F64 => self.bwd_typed::<f64>(x, w, b, gy)?,
            d => candle_core::bail!("layer_norm: no CPU kernel for {d:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}
