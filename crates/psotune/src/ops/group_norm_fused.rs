//! Group norm (optionally followed by SiLU) as one CPU custom op.
//!
//! The composed `ops::group_norm` builds about ten full-size temporaries in
//! the forward pass (casts, centring, squares, division, affine) and keeps
//! them for candle's backward; in a UNet these norms sit before every
//! convolution. This op reads x once for the statistics and once for the
//! output, and its backward recomputes the statistics from x instead of
//! saving them: with x^ = (x - mean) rstd and g the gradient of the affine
//! output y = x^ gamma + beta (of SiLU(y) when fused),
//!
//!   dbeta_c  = sum g,  dgamma_c = sum g x^            (over batch, positions)
//!   dx       = rstd (g gamma - mean_G(g gamma) - x^ mean_G(g gamma x^))
//!
//! where mean_G runs over the group (PyTorch's `GroupNormKernel.cpp` has the
//! same formula). Statistics accumulate in f64 for f32 input, so the result
//! is at least as accurate as the composed version's f32 sums.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::real::{sigmoid, Real};
use super::cpu::reduce::lane_sum;
use super::cpu::simd::Simd;
use super::cpu::with_slice;
use super::{group_norm, silu};

/// `torch.nn.functional.group_norm` over [B, C, ...] with affine weights.
/// f32 / f64 on the CPU run the fused kernel of this module; other dtypes
/// and devices the composed [`group_norm`].
pub fn group_norm_fused(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    apply(x, groups, weight, bias, eps, false)
}

/// `silu(group_norm(x))`, the pair in front of every convolution of a
/// diffusers `ResnetBlock2D`, as one op (no intermediate tensor kept).
pub fn group_norm_silu(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    apply(x, groups, weight, bias, eps, true)
}

fn apply(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64, with_silu: bool) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 || groups == 0 || !dims[1].is_multiple_of(groups) {
        candle_core::bail!("group_norm: {groups} groups do not divide the channels of shape {dims:?}");
    }
    let c = dims[1];
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!("group_norm: weight {:?} / bias {:?} do not match {c} channels", weight.dims(), bias.dims());
    }
    let dt = x.dtype();
    let fast = x.device().is_cpu() && matches!(dt, DType::F32 | DType::F64) && weight.dtype() == dt && bias.dtype() == dt;
    if !fast {
        let y = group_norm(x, groups, weight, bias, eps)?;
        return if with_silu { silu(&y) } else { Ok(y) };
    }
    let shape = GnShape { batch: dims[0], channels: c, groups, spatial: dims[2..].iter().product() };
    let op = GroupNormOp { shape, eps, with_silu, simd: Simd::active() };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

#[derive(Debug, Clone, Copy)]
struct GnShape {
    batch: usize,
    channels: usize,
    groups: usize,
    /// Positions per channel (product of the dims after C).
    spatial: usize,
}

impl GnShape {
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }

    /// Elements of one (image, group) block, contiguous in NC... layout.
    fn block(&self) -> usize {
        self.per_group() * self.spatial
    }
}

struct GroupNormOp {
    shape: GnShape,
    eps: f64,
    with_silu: bool,
    /// The SIMD path, read on the thread that made the op.
    simd: Simd,
}

fn slice_of<'a, T: Real>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("group_norm: expected a contiguous operand"),
    }
}

/// (mean, 1 / sqrt(var + eps)) of one block, biased variance, two passes.
#[inline(always)]
fn stats<T: Real>(xs: &[T], eps: f64) -> (T, T) {
    let n = xs.len().max(1) as f64;
    let mean = lane_sum(xs, |v| v) / n;
    let m = T::from_f64(mean);
    let var = lane_sum(xs, |v| (v - m) * (v - m)) / n;
    (m, T::from_f64(1.0 / (var + eps).sqrt()))
}

impl GroupNormOp {
    fn forward<T: Real>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let s = self.shape;
        let mut y = vec![T::zero(); x.len()];
        if s.block() == 0 {
            return y;
        }
        y.par_chunks_mut(s.block()).zip(x.par_chunks(s.block())).enumerate().for_each(|(i, (yb, xb))| self.simd.vectorize(#[inline(always)] || {
            let (mean, rstd) = stats(xb, self.eps);
            let c0 = (i % s.groups) * s.per_group();
            for (ci, (yc, xc)) in yb.chunks_mut(s.spatial).zip(xb.chunks(s.spatial)).enumerate() {
                // y = x a + b with a = rstd gamma, b = beta - mean a.
                let a = rstd * gamma[c0 + ci];
                let b = beta[c0 + ci] - mean * a;
                if self.with_silu {
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        let t = v * a + b;
                        *o = t * sigmoid(t);
                    }
                } else {
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        *o = v * a + b;
                    }
                }
            }
        }));
        y
    }

    /// (dx, dgamma, dbeta) from x and the output gradient `gy`.
    fn backward<T: Real>(&self, x: &[T], gamma: &[T], beta: &[T], gy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let s = self.shape;
        let (cpg, sp) = (s.per_group(), s.spatial);
        let mut dx = vec![T::zero(); x.len()];
        // Per (image, channel): (sum g, sum g x^), reduced over images afterwards.
        let mut sums = vec![(0f64, 0f64); s.batch * s.channels];
        if s.block() > 0 {
            dx.par_chunks_mut(s.block())
                .zip(x.par_chunks(s.block()))
                .zip(gy.par_chunks(s.block()))
                .zip(sums.par_chunks_mut(cpg))
                .enumerate()
                .for_each(|(i, (((dxb, xb), gyb), sb))| self.simd.vectorize(#[inline(always)] || {
                    let (mean, rstd) = stats(xb, self.eps);
                    let c0 = (i % s.groups) * cpg;
                    let (mut a_sum, mut b_sum) = (0f64, 0f64);
                    for ci in 0..cpg {
                        let (gm, bt) = (gamma[c0 + ci], beta[c0 + ci]);
                        let r = ci * sp..(ci + 1) * sp;
                        let (dc, xc, gc) = (&mut dxb[r.clone()], &xb[r.clone()], &gyb[r]);
                        // g: the gradient of the affine output (through SiLU's
                        // derivative s (1 + t (1 - s)) when fused), kept in dx.
                        if self.with_silu {
                            let (a, b) = (rstd * gm, bt - mean * rstd * gm);
                            for ((d, &v), &go) in dc.iter_mut().zip(xc).zip(gc) {
                                let t = v * a + b;
                                let sg = sigmoid(t);
                                *d = go * sg * (T::one() + t * (T::one() - sg));
                            }
                        } else {
                            dc.copy_from_slice(gc);
                        }
                        let sg = lane_sum(dc, |g| g);
                        // sum g x^ = rstd (sum g x - mean sum g)
                        let sgx_raw = {
                            let mut total = 0f64;
                            for (dchunk, xchunk) in dc.chunks(1024).zip(xc.chunks(1024)) {
                                let mut lanes = [T::zero(); 8];
                                let (mut di, mut xi) = (dchunk.chunks_exact(8), xchunk.chunks_exact(8));
                                for (d8, x8) in (&mut di).zip(&mut xi) {
                                    for l in 0..8 {
                                        lanes[l] += d8[l] * (x8[l] - mean);
                                    }
                                }
                                total += lanes.iter().map(|v| v.to_f64()).sum::<f64>();
                                total += di.remainder().iter().zip(xi.remainder()).map(|(&d, &v)| (d * (v - mean)).to_f64()).sum::<f64>();
                            }
                            total
                        };
                        let sgx = sgx_raw * rstd.to_f64();
                        sb[ci] = (sg, sgx);
                        a_sum += gm.to_f64() * sg;
                        b_sum += gm.to_f64() * sgx;
                    }
                    let n = s.block() as f64;
                    let (a_mean, b_mean) = (T::from_f64(a_sum / n), T::from_f64(b_sum / n));
                    // dx = rstd (g gamma - mean(g gamma) - x^ mean(g gamma x^)).
                    for ci in 0..cpg {
                        let gm = gamma[c0 + ci];
                        let r = ci * sp..(ci + 1) * sp;
                        let (p, q) = (rstd * gm, rstd * rstd * b_mean);
                        let c = q * mean - rstd * a_mean;
                        // rstd (g gm - a_mean - (v - mean) rstd b_mean) = g p - v q + c
                        for (d, &v) in dxb[r.clone()].iter_mut().zip(&xb[r]) {
                            *d = *d * p - v * q + c;
                        }
                    }
                }));
        }
        let (mut dgamma, mut dbeta) = (vec![0f64; s.channels], vec![0f64; s.channels]);
        for per_image in sums.chunks(s.channels) {
            for (c, &(sg, sgx)) in per_image.iter().enumerate() {
                dbeta[c] += sg;
                dgamma[c] += sgx;
            }
        }
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
        (dx, cast(dgamma), cast(dbeta))
    }

    fn bwd_typed<T: Real>(&self, x: &Tensor, w: &Tensor, b: &Tensor, gy: &Tensor) -> Result<[Tensor; 3]> {
        let gy = gy.contiguous()?;
        let (dx, dg, db) = with_slice::<T, _>(x, |xs| {
            with_slice::<T, _>(w, |ws| with_slice::<T, _>(b, |bs| with_slice::<T, _>(&gy, |gs| Ok(self.backward(xs, ws, bs, gs)))))
        })?;
        Ok([
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dg, w.shape(), w.device())?,
            Tensor::from_vec(db, b.shape(), b.device())?,
        ])
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "psotune-group-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            DType::F64 => CpuStorage::F64(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            d => candle_core::bail!("group_norm: no CPU kernel for {d:?}"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(x, w, b, gy)?,
            DType::F64 => self.bwd_typed::<f64>(x, w, b, gy)?,
            d => candle_core::bail!("group_norm: no CPU kernel for {d:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
#[path = "group_norm_fused_tests.rs"]
mod tests;
