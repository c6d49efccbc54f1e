//! Basic layers. Field names equal the checkpoint key segments (`weight`,
//! `bias`); LoRA later wraps `Linear` and `Conv2d` in place.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops;

/// `torch.nn.Linear`: y = x W^T + b, over the last dimension of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.t()?;
        let y = match x.rank() {
            2 => x.matmul(&w)?,
            _ => {
                let dims = x.dims();
                let last = dims[dims.len() - 1];
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let y = x.reshape((rows, last))?.matmul(&w)?;
                let mut out_dims = dims[..dims.len() - 1].to_vec();
                out_dims.push(self.weight.dim(0)?);
                y.reshape(out_dims)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
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
}

impl Conv2d {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        let weight = vb.get((cout, cin, kernel, kernel), "weight")?;
        let bias = Some(vb.get(cout, "bias")?);
        Ok(Self { weight, bias, stride, padding })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d_bias(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
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
