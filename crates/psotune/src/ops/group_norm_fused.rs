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
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

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
    let op = GroupNormOp { shape, eps, with_silu };
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
}

fn slice_of<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("group_norm: expected a contiguous operand"),
    }
}

/// (mean, 1 / sqrt(var + eps)) of one block, biased variance, two passes.
fn stats<T: WithDType>(xs: &[T], eps: f64) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = xs.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

impl GroupNormOp {
    fn forward<T: WithDType>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let s = self.shape;
        let mut y = vec![T::zero(); x.len()];
        if s.block() == 0 {
            return y;
        }
        y.par_chunks_mut(s.block()).zip(x.par_chunks(s.block())).enumerate().for_each(|(i, (yb, xb))| {
            let (mean, rstd) = stats(xb, self.eps);
            let c0 = (i % s.groups) * s.per_group();
            for (ci, (yc, xc)) in yb.chunks_mut(s.spatial).zip(xb.chunks(s.spatial)).enumerate() {
                // y = x a + b with a = rstd gamma, b = beta - mean a: one fma per element.
                let a = rstd * gamma[c0 + ci].to_f64();
                let b = beta[c0 + ci].to_f64() - mean * a;
                for (o, v) in yc.iter_mut().zip(xc) {
                    let t = v.to_f64() * a + b;
                    *o = T::from_f64(if self.with_silu { t * sigmoid(t) } else { t });
                }
            }
        });
        y
    }

    /// (dx, dgamma, dbeta) from x and the output gradient `gy`.
    fn backward<T: WithDType>(&self, x: &[T], gamma: &[T], beta: &[T], gy: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
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
                .for_each(|(i, (((dxb, xb), gyb), sb))| {
                    let (mean, rstd) = stats(xb, self.eps);
                    let c0 = (i % s.groups) * cpg;
                    let (mut a_sum, mut b_sum) = (0f64, 0f64);
                    for ci in 0..cpg {
                        let (gm, bt) = (gamma[c0 + ci].to_f64(), beta[c0 + ci].to_f64());
                        let range = ci * sp..(ci + 1) * sp;
                        let (mut sg, mut sgx) = (0f64, 0f64);
                        // First pass: g (after SiLU's derivative) into dx, channel sums.
                        for ((d, v), go) in dxb[range.clone()].iter_mut().zip(&xb[range.clone()]).zip(&gyb[range]) {
                            let xh = (v.to_f64() - mean) * rstd;
                            let mut g = go.to_f64();
                            if self.with_silu {
                                let t = xh * gm + bt;
                                let sg = sigmoid(t);
                                g *= sg * (1.0 + t * (1.0 - sg));
                            }
                            sg += g;
                            sgx += g * xh;
                            *d = T::from_f64(g);
                        }
                        sb[ci] = (sg, sgx);
                        a_sum += gm * sg;
                        b_sum += gm * sgx;
                    }
                    let n = s.block() as f64;
                    let (a_mean, b_mean) = (a_sum / n, b_sum / n);
                    // Second pass: dx = rstd (g gamma - mean(g gamma) - x^ mean(g gamma x^)).
                    for ci in 0..cpg {
                        let gm = gamma[c0 + ci].to_f64();
                        let range = ci * sp..(ci + 1) * sp;
                        for (d, v) in dxb[range.clone()].iter_mut().zip(&xb[range]) {
                            let xh = (v.to_f64() - mean) * rstd;
                            *d = T::from_f64(rstd * (d.to_f64() * gm - a_mean - xh * b_mean));
                        }
                    }
                });
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

    fn bwd_typed<T: WithDType>(&self, x: &Tensor, w: &Tensor, b: &Tensor, gy: &Tensor) -> Result<[Tensor; 3]> {
        let vecs = |t: &Tensor| -> Result<Vec<T>> { t.flatten_all()?.to_vec1::<T>() };
        let (dx, dg, db) = self.backward(&vecs(x)?, &vecs(w)?, &vecs(b)?, &vecs(gy)?);
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
