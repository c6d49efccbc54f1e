//! Layer norm and group norm from differentiable primitives. For half
//! precision input the statistics and the affine transform run in f32 and the
//! result is rounded once, as PyTorch's CPU kernels do (`opmath_t`); summing
//! thousands of f16 activations in f16 would lose precision or overflow.

use candle_core::{Result, Tensor, D};

use super::compute_dtype;

/// (x - mean) / sqrt(var + eps) over the last dimension (biased variance).
fn normalize_last_dim(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// `torch.nn.functional.layer_norm` over the last dimension, then scale and
/// shift, from differentiable primitives: the path of dtypes and devices
/// without a fused kernel (see `layer_norm_fused`).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let ct = compute_dtype(x.dtype());
    let out = normalize_last_dim(&x.to_dtype(ct)?, eps)?.broadcast_mul(&weight.to_dtype(ct)?)?;
    let out = match bias {
        Some(b) => out.broadcast_add(&b.to_dtype(ct)?)?,
        None => out,
    };
    out.to_dtype(x.dtype())
}

/// `torch.nn.functional.group_norm` over [B, C, ...]: C is split into
/// `groups`, each normalised over its channels and all positions; affine per
/// channel.
pub fn group_norm(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 || groups == 0 || !dims[1].is_multiple_of(groups) {
        candle_core::bail!("group_norm: {groups} groups do not divide the channels of shape {dims:?}");
    }
    let ct = compute_dtype(x.dtype());
    let normed = normalize_last_dim(&x.to_dtype(ct)?.reshape((dims[0], groups, ()))?, eps)?.reshape(dims.as_slice())?;
    let mut affine_shape = vec![1usize; dims.len()];
    affine_shape[1] = dims[1];
    normed
        .broadcast_mul(&weight.to_dtype(ct)?.reshape(affine_shape.as_slice())?)?
        .broadcast_add(&bias.to_dtype(ct)?.reshape(affine_shape.as_slice())?)?
        .to_dtype(x.dtype())
}
