//! Softmax over the last dimension, numerically stable, with backward.

use candle_core::{Result, Tensor, D};

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    // Subtracting the (detached) row max changes nothing mathematically, so
    // its gradient contribution is zero and detaching it is exact.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}
