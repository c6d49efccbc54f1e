//! diffusers `ResnetBlock2D` with `time_embedding_norm = "default"`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::ops;

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    /// Absent in the VAE (no time embedding).
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1 projection when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let norm1 = GroupNorm::load(vb.pp("norm1"), groups, in_channels, eps)?;
        let conv1 = Conv2d::load(vb.pp("conv1"), in_channels, out_channels, 3, 1, 1)?;
        let time_emb_proj = match temb_channels {
            Some(t) => Some(Linear::load(vb.pp("time_emb_proj"), t, out_channels, true)?),
            None => None,
        };
        let norm2 = GroupNorm::load(vb.pp("norm2"), groups, out_channels, eps)?;
        let conv2 = Conv2d::load(vb.pp("conv2"), out_channels, out_channels, 3, 1, 1)?;
        let conv_shortcut = if in_channels != out_channels {
            Some(Conv2d::load(vb.pp("conv_shortcut"), in_channels, out_channels, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self { norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut, output_scale_factor })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        // Norm and SiLU fused in one pass (and one backward) on the CPU.
        let n1 = &self.norm1;
        let mut h = self.conv1.forward(&ops::group_norm_silu(x, n1.num_groups, &n1.weight, &n1.bias, n1.eps)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&ops::silu(t)?)?;
            h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let n2 = &self.norm2;
        let h = self.conv2.forward(&ops::group_norm_silu(&h, n2.num_groups, &n2.weight, &n2.bias, n2.eps)?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
