//! The VAE's blocks (diffusers `models/unets/unet_2d_blocks.py`):
//! `DownEncoderBlock2D`, `UpDecoderBlock2D` and `UNetMidBlock2D`, in the form
//! the VAE builds them: no time embedding, resnet eps 1e-6, output scale 1.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::AttentionBlock;
use crate::models::blocks::{Downsample2D, ResnetBlock2D, Upsample2D};

/// diffusers' `Encoder`/`Decoder` pass `resnet_eps=1e-6` everywhere.
pub(crate) const VAE_EPS: f64 = 1e-6;

fn resnet(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<ResnetBlock2D> {
    ResnetBlock2D::load(vb, cin, cout, None, groups, VAE_EPS, 1.0)
}

#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// Key `downsamplers.0`; absent on the last block.
    pub downsamplers: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, layers: usize, groups: usize, downsample: bool) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| resnet(vb.pp("resnets").pp(i), if i == 0 { cin } else { cout }, cout, groups))
            .collect::<Result<Vec<_>>>()?;
        // The encoder asks for `downsample_padding=0`: the asymmetric LDM pad.
        let downsamplers =
            if downsample { Some(Downsample2D::load(vb.pp("downsamplers").pp(0), cout, cout, 0)?) } else { None };
        Ok(Self { resnets, downsamplers })
    }
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.downsamplers {
            Some(d) => d.forward(&h),
            None => Ok(h),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// Key `upsamplers.0`; absent on the last block.
    pub upsamplers: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn load(vb: VarBuilder, cin: usize, cout: usize, layers: usize, groups: usize, upsample: bool) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| resnet(vb.pp("resnets").pp(i), if i == 0 { cin } else { cout }, cout, groups))
            .collect::<Result<Vec<_>>>()?;
        let upsamplers = if upsample { Some(Upsample2D::load(vb.pp("upsamplers").pp(0), cout, cout)?) } else { None };
        Ok(Self { resnets, upsamplers })
    }
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.upsamplers {
            Some(u) => u.forward(&h, None),
            None => Ok(h),
        }
    }
}

/// `UNetMidBlock2D` with `num_layers = 1`: resnet, attention, resnet.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// One per resnet after the first; `None` with `mid_block_add_attention = false`
    /// (diffusers keeps `None` in its ModuleList, so the indices line up).
    pub attentions: Vec<Option<AttentionBlock>>,
}

impl UNetMidBlock2D {
    pub fn load(vb: VarBuilder, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let resnets =
            (0..2).map(|i| resnet(vb.pp("resnets").pp(i), channels, channels, groups)).collect::<Result<Vec<_>>>()?;
        let attention = if add_attention {
            Some(AttentionBlock::load(vb.pp("attentions").pp(0), channels, groups, VAE_EPS)?)
        } else {
            None
        };
        Ok(Self { resnets, attentions: vec![attention] })
    }
}

impl Module for UNetMidBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((first, rest)) = self.resnets.split_first() else {
            candle_core::bail!("UNetMidBlock2D has no resnets")
        };
        let mut h = first.forward(x, None)?;
        for (attn, r) in self.attentions.iter().zip(rest) {
            if let Some(a) = attn {
                h = a.forward(&h)?;
            }
            h = r.forward(&h, None)?;
        }
        Ok(h)
    }
}
