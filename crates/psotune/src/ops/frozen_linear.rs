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
    let (rows, k) = x.dims2()?;
    let (n, kw) = weight.dims2()?;
    if k != kw {
        candle_core::bail!("linear: input {:?} does not match weight {:?}", x.dims(), weight.dims());
    }
    let fast = x.device().is_cpu() && x.dtype() == weight.dtype() && matches!(x.dtype(), DType::F32 | DType::F64) && rows > 0;
    if !fast {
        return x.matmul(&weight.t()?);
    }
    // Recorded in the graph only when x tracks a gradient (candle's rule).
    x.contiguous()?.apply_op1(FrozenLinear { weight: weight.contiguous()?, rows, k, n })
}

struct FrozenLinear {
    weight: Tensor,
    rows: usize,
    k: usize,
    n: usize,
}

impl FrozenLinear {
    fn forward<T: WithDType>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let mut y = vec![T::zero(); self.rows * self.n];
        let threads = rayon::current_num_threads().max(1);
        // y [rows, n] = x [rows, k] * (W [n, k])^T
        matmul(&mut y, self.n, Mat::rows(x, self.rows, self.k, self.k), Mat::transposed(w, self.k, self.n, self.k), false, threads);
        y
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "psotune-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.weight.storage_and_layout();
        let w = match &*ws {
            candle_core::Storage::Cpu(c) => c,
            _ => candle_core::bail!("linear: the weight is not on the CPU"),
        };
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(slice_of::<f32>(s, l)?, slice_of::<f32>(w, wl)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(slice_of::<f64>(s, l)?, slice_of::<f64>(w, wl)?)),
            _ => candle_core::bail!("linear: no CPU kernel for {:?}", s.dtype()),
        };
        Ok((out, Shape::from((self.rows, self.n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        // d x = gy W; the weight is a constant, so this builds no graph.
        Ok(Some(gy.matmul(&self.weight)?))
    }
}
