//! diffusers `Encoder` (`models/autoencoders/vae.py`) with `double_z = True`:
//! the output holds a mean and a log-variance per latent channel.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{DownEncoderBlock2D, UNetMidBlock2D, VAE_EPS};
use super::config::VaeConfig;
use crate::nn::{Conv2d, GroupNorm};
use crate::ops;

#[derive(Debug, Clone)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let (Some(&first), Some(&last)) = (ch.first(), ch.last()) else {
            candle_core::bail!("VAE config has no block_out_channels")
        };
        let groups = cfg.norm_num_groups;
        let conv_in = Conv2d::load(vb.pp("conv_in"), cfg.in_channels, first, 3, 1, 1)?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = first;
        for (i, &cout) in ch.iter().enumerate() {
            let downsample = i + 1 < ch.len();
            let vb_i = vb.pp("down_blocks").pp(i);
            down_blocks.push(DownEncoderBlock2D::load(vb_i, cin, cout, cfg.layers_per_block, groups, downsample)?);
            cin = cout;
        }
        let mid_block = UNetMidBlock2D::load(vb.pp("mid_block"), last, groups, cfg.mid_block_add_attention)?;
        let conv_norm_out = GroupNorm::load(vb.pp("conv_norm_out"), groups, last, VAE_EPS)?;
        let conv_out = Conv2d::load(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?;
        Ok(Self { conv_in, down_blocks, mid_block, conv_norm_out, conv_out })
    }
}

impl Module for Encoder {
    /// [B, in_channels, H, W] -> [B, 2 * latent_channels, H / f, W / f].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&ops::silu(&self.conv_norm_out.forward(&h)?)?)
    }
}
