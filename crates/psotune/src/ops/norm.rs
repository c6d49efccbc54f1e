//! Layer norm and group norm from differentiable primitives. Statistics are
//! computed in f32 when the input is half precision, as PyTorch does.

use candle_core::{DType, Result, Tensor, D};

fn stats_dtype(x: &Tensor) -> DType {
    match x.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// Normalise over the last dimension, then scale and shift (weights of the
/// last dimension's size).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xs = x.to_dtype(stats_dtype(x))?;
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    let out = normed.broadcast_mul(weight)?;
    match bias {
        Some(b) => out.broadcast_add(b),
        None => Ok(out),
    }
}

/// Group norm over [B, C, ...]: C is split into `groups`, each normalised over
/// its channels and all spatial positions; affine per channel.
pub fn group_norm(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 || dims[1] % groups != 0 {
        candle_core::bail!("group_norm: {groups} groups do not divide the channels of shape {dims:?}");
    }
    let (b, c) = (dims[0], dims[1]);
    let dtype = x.dtype();
    let xs = x.to_dtype(stats_dtype(x))?.reshape((b, groups, ()))?;
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?.reshape(dims.as_slice())?;
    let mut affine_shape = vec![1usize; dims.len()];
    affine_shape[1] = c;
    normed
        .broadcast_mul(&weight.reshape(affine_shape.as_slice())?)?
        .broadcast_add(&bias.reshape(affine_shape.as_slice())?)
}
