//! diffusers `Downsample2D` (strided conv) and `Upsample2D` (nearest + conv).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::Conv2d;
use crate::ops;

#[derive(Debug, Clone)]
pub struct Downsample2D {
    pub conv: Conv2d,
    /// diffusers pads (0, 1, 0, 1) by hand when `padding == 0` (the VAE
    /// encoder), to keep the original LDM behaviour.
    pub asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn load(vb: VarBuilder, channels: usize, out_channels: usize, padding: usize) -> Result<Self> {
        let conv = Conv2d::load(vb.pp("conv"), channels, out_channels, 3, 2, padding)?;
        Ok(Self { conv, asymmetric_pad: padding == 0 })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(vb.pp("conv"), channels, out_channels, 3, 1, 1)? })
    }

    /// `size`: the target (H, W) when it is not exactly twice the input (the
    /// UNet passes its skip connection's size for odd latent sizes).
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let up = match size {
            Some((th, tw)) if (th, tw) != (2 * h, 2 * w) => ops::upsample_nearest_to(x, th, tw)?,
            _ => ops::upsample_nearest2x(x)?,
        };
        self.conv.forward(&up)
    }
}
