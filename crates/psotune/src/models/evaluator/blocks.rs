//! The evaluator's building blocks: a pre-activation residual block (He et
//! al. 2016, "Identity mappings in deep residual networks") with GroupNorm
//! and SiLU, as diffusers' `ResnetBlock2D` without the time embedding, but
//! able to halve the resolution with a stride-2 first convolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Conv2d, GroupNorm};
use crate::ops;

/// `norm1 -> SiLU -> conv1 (stride) -> norm2 -> SiLU -> conv2`, plus a
/// shortcut (a strided 1x1 projection when shape changes).
#[derive(Debug, Clone)]
pub struct EvaluatorResnet {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// Present when the channel count or the resolution changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl EvaluatorResnet {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, stride: usize, groups: usize) -> Result<Self> {
        const EPS: f64 = 1e-5;
        let norm1 = GroupNorm::load(vb.pp("norm1"), groups, cin, EPS)?;
        let conv1 = Conv2d::load(vb.pp("conv1"), cin, cout, 3, stride, 1)?;
        let norm2 = GroupNorm::load(vb.pp("norm2"), groups, cout, EPS)?;
        let conv2 = Conv2d::load(vb.pp("conv2"), cout, cout, 3, 1, 1)?;
        let conv_shortcut =
            if cin != cout || stride != 1 { Some(Conv2d::load(vb.pp("conv_shortcut"), cin, cout, 1, stride, 0)?) } else { None };
        Ok(Self { norm1, conv1, norm2, conv2, conv_shortcut })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n1, n2) = (&self.norm1, &self.norm2);
        let h = self.conv1.forward(&ops::group_norm_silu(x, n1.num_groups, &n1.weight, &n1.bias, n1.eps)?)?;
        let h = self.conv2.forward(&ops::group_norm_silu(&h, n2.num_groups, &n2.weight, &n2.bias, n2.eps)?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}

/// One resolution level: `resnets.0` halves the resolution (except in the
/// first level) and changes the channel count, the rest keep both.
#[derive(Debug, Clone)]
pub struct EvaluatorDownBlock {
    pub resnets: Vec<EvaluatorResnet>,
}

impl EvaluatorDownBlock {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, layers: usize, downsample: bool, groups: usize) -> Result<Self> {
        let vb = vb.pp("resnets");
        let resnets = (0..layers)
            .map(|i| {
                let (c, stride) = if i == 0 { (cin, if downsample { 2 } else { 1 }) } else { (cout, 1) };
                EvaluatorResnet::load(vb.pp(i), c, cout, stride, groups)
            })
            .collect::<Result<_>>()?;
        Ok(Self { resnets })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        Ok(h)
    }
}
