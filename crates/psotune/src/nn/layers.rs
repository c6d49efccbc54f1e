//! Basic layers. Field names equal the checkpoint key segments (`weight`,
//! `bias`); `Linear` and `Conv2d` carry an optional LoRA adapter in place
//! (see [`super::lora`]), which is not a checkpoint key.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::lora::{in_dtype, Lora};
use crate::ops;

/// `torch.nn.Linear`: y = x W^T + b, over the last dimension of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// LoRA adapter added to the output while its switch is on.
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { weight, bias, lora: None })
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, lora: None }
    }
}

/// `x W^T` over the last dimension of `x`, any rank.
/// A weight that tracks no gradient (frozen) goes through
/// [`ops::matmul_frozen_weight`], whose backward skips the weight gradient
/// candle's matmul would compute and throw away.
pub(crate) fn matmul_last(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let frozen = !weight.track_op() && weight.rank() == 2;
    over_last_dim(x, weight.dim(0)?, |x2| if frozen { ops::matmul_frozen_weight(x2, weight) } else { x2.matmul(&weight.t()?) })
}

/// `f` of `x` flattened to [rows, last], with the result's last dimension
/// (`out`) put back in place of x's.
fn over_last_dim(x: &Tensor, out: usize, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.rank() {
        2 => f(x),
        _ => {
            let dims = x.dims();
            let last = dims[dims.len() - 1];
            let rows: usize = dims[..dims.len() - 1].iter().product();
            let y = f(&x.reshape((rows, last))?)?;
            let mut out_dims = dims[..dims.len() - 1].to_vec();
            out_dims.push(out);
            y.reshape(out_dims)
        }
    }
}

/// A layer's weight and bias in the activations' dtype `dt`: trained
/// weights of a half-precision model are f32 masters, cast in the graph
/// (no op when the dtypes already agree).
fn params_in(weight: &Tensor, bias: Option<&Tensor>, dt: candle_core::DType) -> Result<(Tensor, Option<Tensor>)> {
    Ok((in_dtype(weight, dt)?, bias.map(|b| in_dtype(b, dt)).transpose()?))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = params_in(&self.weight, self.bias.as_ref(), x.dtype())?;
        // A frozen weight and bias (LoRA training, every reference pass,
        // sampling) take one op with the bias as the product's start.
        let frozen = !weight.track_op() && weight.rank() == 2 && bias.as_ref().is_none_or(|b| !b.track_op());
        let y = match &bias {
            Some(b) if frozen => over_last_dim(x, weight.dim(0)?, |x2| ops::linear_frozen(x2, &weight, Some(b)))?,
            Some(b) => ops::bias_add_last(&matmul_last(x, &weight)?, b)?,
            None => matmul_last(x, &weight)?,
        };
        // Switched off, the adapter is skipped entirely: the output is the
        // base layer's bit for bit (the PSO reference forward), unless the
        // run anchored its starting LoRA into the frozen model.
        match self.lora.as_ref().map(|l| l.linear_delta(x)).transpose()?.flatten() {
            Some(d) => y + d,
            None => Ok(y),
        }
    }
}

/// `torch.nn.Conv2d` (groups = 1, dilation = 1).
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    /// LoRA adapter added to the output while its switch is on.
    pub lora: Option<Lora>,
}

impl Conv2d {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = vb.get((cout, cin, kernel, kernel), "weight")?;
        let bias = Some(vb.get(cout, "bias")?);
        Ok(Self { weight, bias, stride, padding, lora: None })
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Self {
        Self { weight, bias, stride, padding, lora: None }
    }
}

impl ConvKernel for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = params_in(&self.weight, self.bias.as_ref(), x.dtype())?;
        ops::conv2d_bias(x, &weight, bias.as_ref(), self.stride, self.padding)
    }
}

/// `torch.nn.GroupNorm` with affine weights.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub num_groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(vb: VarBuilder, num_groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, num_groups, eps })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::group_norm_fused(x, self.num_groups, &self.weight, &self.bias, self.eps)
    }
}

/// The convolution itself, without the adapter (private: outside this file
/// `conv.forward(x)` is always `Module::forward`, which adds it).
trait ConvKernel {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// `Conv2d`'s forward: the kernel (`ConvKernel`, above) plus the LoRA branch.
impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ConvKernel::forward(self, x)?;
        // Switched off, the adapter is skipped entirely (bit-exact base).
        match self.lora.as_ref().map(|l| l.conv_delta(x, self.stride, self.padding)).transpose()?.flatten() {
            Some(d) => y + d,
            None => Ok(y),
        }
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: Some(vb.get(dim, "bias")?), eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps)
    }
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
