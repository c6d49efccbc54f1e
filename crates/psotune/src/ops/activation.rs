//! Activation functions with backward.

use candle_core::{Result, Tensor, D};

/// GELU with the exact erf form (diffusers' and CLIP's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// CLIP's `quick_gelu`: x * sigmoid(1.702 x).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// GEGLU's gating (diffusers `GEGLU` after its projection): the projection
/// output is split in half on the last dim, `hidden * gelu(gate)`.
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    let n = projected.dim(D::Minus1)?;
    if n % 2 != 0 {
        candle_core::bail!("geglu needs an even last dimension, got {n}");
    }
    let hidden = projected.narrow(D::Minus1, 0, n / 2)?;
    let gate = projected.narrow(D::Minus1, n / 2, n / 2)?;
    hidden * gelu_erf(&gate)?
}
