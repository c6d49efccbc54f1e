//! diffusers `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`) and its
//! posterior `DiagonalGaussianDistribution` (`models/autoencoders/vae.py`).
//! No tiling or slicing: the model runs whole images.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::VaeConfig;
use super::decoder::Decoder;
use super::encoder::Encoder;
use crate::error::Error;
use crate::nn::{Conv2d, Weights};

/// The encoder's posterior N(mean, exp(logvar)) per latent element.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20], as diffusers does before taking exponentials.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Split the encoder's [B, 2L, h, w] moments into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c = moments.dim(1)?;
        if c % 2 != 0 {
            candle_core::bail!("posterior moments need an even channel count, got shape {:?}", moments.dims());
        }
        let mean = moments.narrow(1, 0, c / 2)?;
        let logvar = moments.narrow(1, c / 2, c / 2)?.clamp(-30f64, 20f64)?;
        Ok(Self { mean, logvar })
    }

    pub fn std(&self) -> Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// mean + std * noise, with `noise` standard normal of the mean's shape
    /// (the caller owns the RNG, so sampling is reproducible).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            candle_core::bail!("posterior noise has shape {:?}, the latent is {:?}", noise.dims(), self.mean.dims());
        }
        &self.mean + (self.std()? * noise.to_dtype(self.mean.dtype())?)?
    }

    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }
}

#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// 1x1 convs around the latent; absent with `use_quant_conv = false`
    /// (resp. `use_post_quant_conv`).
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
    /// The weights' dtype; inputs are cast to it and outputs back.
    dtype: DType,
}

impl AutoencoderKL {
    pub fn load(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        if let Err((key, msg)) = cfg.check() {
            candle_core::bail!("VAE config key `{key}`: {msg}");
        }
        let l = cfg.latent_channels;
        let encoder = Encoder::load(vb.pp("encoder"), cfg)?;
        let decoder = Decoder::load(vb.pp("decoder"), cfg)?;
        let quant_conv =
            if cfg.use_quant_conv { Some(Conv2d::load(vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?) } else { None };
        let post_quant_conv =
            if cfg.use_post_quant_conv { Some(Conv2d::load(vb.pp("post_quant_conv"), l, l, 1, 1, 0)?) } else { None };
        Ok(Self { encoder, decoder, quant_conv, post_quant_conv, config: cfg.clone(), dtype: vb.dtype() })
    }

    /// Load a diffusers `vae/` folder (`config.json`,
    /// `diffusion_pytorch_model.safetensors`), strictly: any missing, unused
    /// or mis-shaped tensor is an error naming it.
    pub fn from_folder(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> crate::Result<Self> {
        let dir = dir.as_ref();
        let cfg = VaeConfig::from_file(dir.join("config.json"))?;
        let weights = dir.join("diffusion_pytorch_model.safetensors");
        if !weights.is_file() {
            return Err(Error::ModelFolder {
                path: dir.to_path_buf(),
                msg: "no diffusion_pytorch_model.safetensors (only safetensors weights are read)".into(),
            });
        }
        let w = Weights::from_files(&[weights], dtype, device)?;
        let model = Self::load(w.var_builder(), &cfg)?;
        w.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The dtype the VAE computes in (f32 for a `force_upcast` VAE loaded
    /// with a half-precision pipeline: see `pipeline::load::load_vae`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// image: [B, in_channels, H, W] in [-1, 1] -> the posterior over
    /// [B, latent_channels, H / f, W / f] (f = `config().downsampling_factor()`).
    pub fn encode(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        let (_, c, _, _) = image.dims4()?;
        if c != self.config.in_channels {
            candle_core::bail!("VAE expects {} image channels, got shape {:?}", self.config.in_channels, image.dims());
        }
        let mut h = self.encoder.forward(&image.to_dtype(self.dtype)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        DiagonalGaussian::from_moments(&h.to_dtype(image.dtype())?)
    }

    /// Raw decoder output for an unscaled latent z: roughly [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            candle_core::bail!("VAE expects {} latent channels, got shape {:?}", self.config.latent_channels, z.dims());
        }
        // Computed in the VAE's dtype, returned in the input's (an f16
        // pipeline with an upcast VAE gets f16 back, as it passed).
        let zc = z.to_dtype(self.dtype)?;
        let out = match &self.post_quant_conv {
            Some(p) => self.decoder.forward(&p.forward(&zc)?)?,
            None => self.decoder.forward(&zc)?,
        };
        out.to_dtype(z.dtype())
    }

    /// The latents the diffusion model sees: (z - shift_factor) * scaling_factor,
    /// z sampled with `noise` or, without it, the posterior mean.
    pub fn latents_from_image(&self, image: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let posterior = self.encode(image)?;
        let z = match noise {
            Some(n) => posterior.sample(n)?,
            None => posterior.mode(),
        };
        let (scale, shift) = (self.config.scaling_factor, self.config.shift());
        z.affine(scale, -shift * scale)
    }

    /// Inverse of [`Self::latents_from_image`]: decode(latents / scaling_factor + shift_factor).
    pub fn image_from_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (scale, shift) = (self.config.scaling_factor, self.config.shift());
        self.decode(&latents.affine(1.0 / scale, shift)?)
    }
}
