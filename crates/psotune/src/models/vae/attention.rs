//! The VAE mid block's self-attention: diffusers `Attention` as built by
//! `UNetMidBlock2D` (`models/attention_processor.py`, `AttnProcessor2_0`) with
//! `heads = 1` (head dim = channels), `norm_num_groups` set (a group norm
//! before the projections), `residual_connection = True` and
//! `rescale_output_factor = 1`. Before diffusers 0.14 this module was
//! `AttentionBlock`, whence our name.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{GroupNorm, Linear};
use crate::ops;

#[derive(Debug, Clone)]
pub struct AttentionBlock {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// Key `to_out.0`; diffusers' `to_out.1` is a dropout without weights.
    pub to_out: Linear,
}

impl AttentionBlock {
    pub fn load(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let group_norm = GroupNorm::load(vb.pp("group_norm"), groups, channels, eps)?;
        // Checkpoints saved before diffusers 0.14 (among them the SD 1.x/2.x
        // VAEs on the Hub) name the projections query/key/value/proj_attn;
        // diffusers renames them on load (`_convert_deprecated_attention_blocks`),
        // and so do we, so that the strict loader accepts either spelling.
        let legacy = !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight");
        let name = |new: &'static str, old: &'static str| if legacy { vb.pp(old) } else { vb.pp(new) };
        let linear = |vb: VarBuilder| Linear::load(vb, channels, channels, true);
        Ok(Self {
            group_norm,
            to_q: linear(name("to_q", "query"))?,
            to_k: linear(name("to_k", "key"))?,
            to_v: linear(name("to_v", "value"))?,
            to_out: linear(if legacy { vb.pp("proj_attn") } else { vb.pp("to_out").pp(0) })?,
        })
    }
}

impl Module for AttentionBlock {
    /// x: [B, C, H, W] -> [B, C, H, W].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // diffusers normalises [B, C, HW]; the statistics are the same on [B, C, H, W].
        let tokens = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        // One head of size C: SDPA's default scale 1/sqrt(C).
        let attn = ops::attention(&q, &k, &v, 1.0 / (c as f64).sqrt())?;
        let out = self.to_out.forward(&attn)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + x
    }
}
