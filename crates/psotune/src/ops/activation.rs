//! Activation functions with backward.

use candle_core::backend::BackendStorage;
use candle_core::{op, CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Result, Shape, Tensor, D};

/// GELU with the exact erf form (diffusers' and CLIP's `gelu`),
/// x * Phi(x). The forward is candle's fused kernel; the backward is exact
/// (candle's own `gelu_erf` backward rounds 1/sqrt(2 pi) to 0.398942, a
/// gradient error that finite differences see through GEGLU).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(GeluErf)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu_erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((s.unary_impl::<op::GeluErf>(l)?, l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((s.unary_impl::<op::GeluErf>(l)?, l.shape().clone()))
    }

    fn metal_fwd(&self, s: &MetalStorage, l: &Layout) -> Result<(MetalStorage, Shape)> {
        Ok((s.unary_impl::<op::GeluErf>(l)?, l.shape().clone()))
    }

    /// d/dx x Phi(x) = Phi(x) + x phi(x).
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = x.detach();
        let cdf = ((x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
        let pdf = (x.sqr()?.affine(-0.5, 0.0)?.exp()? * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2))?;
        Ok(Some((grad * (cdf + (x * pdf)?)?)?))
    }
}

/// CLIP's `quick_gelu`: x * sigmoid(1.702 x).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// GEGLU's gating from differentiable primitives: the path of dtypes and
/// devices without a fused kernel (see `geglu_fused`).
pub fn geglu_composed(projected: &Tensor) -> Result<Tensor> {
    let n = projected.dim(D::Minus1)?;
    if n % 2 != 0 {
        candle_core::bail!("geglu needs an even last dimension, got {n}");
    }
    let hidden = projected.narrow(D::Minus1, 0, n / 2)?;
    let gate = projected.narrow(D::Minus1, n / 2, n / 2)?;
    hidden * gelu_erf(&gate)?
}
