//! diffusers `AutoencoderKL`: the VAE that maps images in [-1, 1] to the
//! latents the UNet denoises and back. Built from the folder's own
//! `vae/config.json`; every struct mirrors one diffusers module and its
//! fields are the safetensors key segments.
//!
//! Training backpropagates through [`AutoencoderKL::decode`] (rewards score
//! decoded images), so everything here is made of differentiable candle
//! primitives and `crate::ops`; `tests.rs` gradient-checks the mid block and
//! the decoder.

mod attention;
mod autoencoder;
mod blocks;
mod config;
mod decoder;
mod encoder;

pub use attention::AttentionBlock;
pub use autoencoder::{AutoencoderKL, DiagonalGaussian};
pub use blocks::{DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D};
pub use config::{SampleSize, VaeConfig};
pub use decoder::Decoder;
pub use encoder::Encoder;

#[cfg(test)]
mod tests;
