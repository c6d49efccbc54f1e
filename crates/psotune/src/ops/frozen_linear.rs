//! `x W^T` for a weight that takes no gradient (the frozen base weights of
//! LoRA training, every Linear of the PSO reference pass).
//!
//! candle's matmul backward computes the gradient of both operands whether
//! or not they track one, and keeps it until the backward pass ends: with
//! LoRA on SD 2.1's attention that is a third of every linear layer's
//! backward compute and 1.1 GB of discarded weight gradients. This op
//! holds the weight as a constant and returns only the input's gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};

use super::cpu::gemm::{matmul, Mat};
use super::cpu::slice_of;

/// `x W^T` for a 2-D `x` [rows, k] and a constant weight [n, k]; the
/// caller checks that `weight` tracks no gradient (its gradient is never
/// computed here).
pub fn matmul_frozen_weight(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    linear_frozen(x, weight, None)
}

/// `x W^T + b` for a 2-D `x`, a constant weight [n, k] and an optional
/// constant bias [n]; the caller checks that neither tracks a gradient.
/// The bias is the product's starting value (`torch.addmm`'s form): a
/// separate pass over the output to add it cost 3-5% of a UNet sample.
pub fn linear_frozen(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let (n, kw) = weight.dims2()?;
    if k != kw {
        candle_core::bail!("linear: input {:?} does not match weight {:?}", x.dims(), weight.dims());
    }
    if let Some(b) = bias {
        if b.dims() != [n] {
            candle_core::bail!("linear: bias {:?} does not match weight {:?}", b.dims(), weight.dims());
        }
    }
    let dt = x.dtype();
    let fast = x.device().is_cpu() && weight.dtype() == dt && bias.is_none_or(|b| b.dtype() == dt) && matches!(dt, DType::F32 | DType::F64) && rows > 0;
    if !fast {
        let y = x.matmul(&weight.t()?)?;
        return match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
    }
    let bias = bias.map(Tensor::contiguous).transpose()?;
    // Recorded in the graph only when x tracks a gradient (candle's rule).
    x.contiguous()?.apply_op1(FrozenLinear { weight: weight.contiguous()?, bias, rows, k, n })
}

struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    rows: usize,
    k: usize,
    n: usize,
}

impl FrozenLinear {
    fn forward<T: WithDType>(&self, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
        let y_len = self.rows * self.n;
        let mut y = match bias {
            Some(b) => bias_rows(b, self.rows),
            None => vec![T::zero(); y_len],
        };
        let threads = rayon::current_num_threads().max(1);
        // y [rows, n] (+)= x [rows, k] * (W [n, k])^T
        let (xm, wm) = (Mat::rows(x, self.rows, self.k, self.k), Mat::transposed(w, self.k, self.n, self.k));
        matmul(&mut y, self.n, xm, wm, bias.is_some(), threads);
        y
    }
}

/// `rows` copies of `b` end to end: the product's starting value. Copied a
/// row at a time, since an element-wise `cycle()` collect took ~6% of a
/// 4-step sample (perf, 2026-12-03).
fn bias_rows<T: Copy>(b: &[T], rows: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(b.len() * rows);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    y
}

/// The CPU storage of a constant operand (the weight or the bias).
fn cpu_of(s: &candle_core::Storage) -> Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("linear: the weight or bias is not on the CPU"),
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "psotune-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.weight.storage_and_layout();
        let bs = self.bias.as_ref().map(Tensor::storage_and_layout);
        let w = cpu_of(&ws)?;
        let b = match &bs {
            Some((s, l)) => Some((cpu_of(s)?, *l)),
            None => None,
        };
        let out = match s {
            CpuStorage::F32(_) => {
                let b = b.map(|(c, l)| slice_of::<f32>(c, l)).transpose()?;
                CpuStorage::F32(self.forward(slice_of::<f32>(s, l)?, slice_of::<f32>(w, wl)?, b))
            }
            CpuStorage::F64(_) => {
                let b = b.map(|(c, l)| slice_of::<f64>(c, l)).transpose()?;
                CpuStorage::F64(self.forward(slice_of::<f64>(s, l)?, slice_of::<f64>(w, wl)?, b))
            }
            _ => candle_core::bail!("linear: no CPU kernel for {:?}", s.dtype()),
        };
        Ok((out, Shape::from((self.rows, self.n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        // d x = gy W; the weight is a constant, so this builds no graph.
        Ok(Some(gy.matmul(&self.weight)?))
    }
}
