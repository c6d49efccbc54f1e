//! Softmax over the last dimension, numerically stable, with backward.

use candle_core::{Result, Tensor, D};

use super::compute_dtype;

/// `torch.softmax(x, dim=-1)`; f16/bf16 input is computed in f32 and rounded
/// once, as PyTorch does.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let xs = x.to_dtype(compute_dtype(x.dtype()))?;
    // Subtracting the (detached) row max changes nothing mathematically, so
    // its gradient contribution is zero and detaching it is exact.
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)?.to_dtype(x.dtype())
}
