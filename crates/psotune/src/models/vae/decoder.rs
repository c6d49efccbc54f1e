//! diffusers `Decoder` (`models/autoencoders/vae.py`) with `norm_type = "group"`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{UNetMidBlock2D, UpDecoderBlock2D, VAE_EPS};
use super::config::VaeConfig;
use crate::nn::{Conv2d, GroupNorm};
use crate::ops;

#[derive(Debug, Clone)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let (Some(&first), Some(&last)) = (ch.first(), ch.last()) else {
            candle_core::bail!("VAE config has no block_out_channels")
        };
        let groups = cfg.norm_num_groups;
        let conv_in = Conv2d::load(vb.pp("conv_in"), cfg.latent_channels, last, 3, 1, 1)?;
        let mid_block = UNetMidBlock2D::load(vb.pp("mid_block"), last, groups, cfg.mid_block_add_attention)?;
        // up_blocks.0 works at the deepest (widest) level: the channels run
        // in reverse, and each block has one resnet more than the encoder's.
        let mut up_blocks = Vec::with_capacity(ch.len());
        let mut cin = last;
        for (i, &cout) in ch.iter().rev().enumerate() {
            let upsample = i + 1 < ch.len();
            let vb_i = vb.pp("up_blocks").pp(i);
            up_blocks.push(UpDecoderBlock2D::load(vb_i, cin, cout, cfg.layers_per_block + 1, groups, upsample)?);
            cin = cout;
        }
        let conv_norm_out = GroupNorm::load(vb.pp("conv_norm_out"), groups, first, VAE_EPS)?;
        let conv_out = Conv2d::load(vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?;
        Ok(Self { conv_in, mid_block, up_blocks, conv_norm_out, conv_out })
    }
}

impl Module for Decoder {
    /// [B, latent_channels, h, w] -> [B, out_channels, h * f, w * f].
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for block in &self.up_blocks {
            h = block.forward(&h)?;
        }
        self.conv_out.forward(&ops::silu(&self.conv_norm_out.forward(&h)?)?)
    }
}
