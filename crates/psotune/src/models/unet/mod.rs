//! diffusers' `UNet2DConditionModel` for the SD 1.x / 2.x / XL families
//! (diffusers 0.42.1 `models/unets/`), built from the folder's own
//! `unet/config.json`, one struct per diffusers module, field names equal to
//! the checkpoint key segments.
//!
//! ```text
//! let cfg = UNetConfig::from_file(dir.join("unet/config.json"))?;
//! let unet = UNet2DConditionModel::load(weights.var_builder(), &cfg)?;
//! weights.finish()?;   // every key used, none missing
//! let eps = unet.forward(&latents, &timesteps, &text_states, added.as_ref())?;
//! ```

mod attention;
mod blocks;
mod config;
mod embeddings;
mod model;
mod transformer;
mod visit;

#[cfg(test)]
pub(crate) mod testing;

pub use attention::{Attention, BasicTransformerBlock, FeedForward, TransformerSpec, GEGLU};
pub use blocks::{AttentionSpec, DownBlock, ResnetSpec, UNetMidBlock2DCrossAttn, UpBlock};
pub use config::{Activation, DownBlockType, MidBlockType, TextTimeEmbedConfig, UNetConfig, UpBlockType};
pub use embeddings::{guidance_scale_embedding, timestep_embedding, TimestepEmbedding};
pub use model::{AddedCond, UNet2DConditionModel};
pub use transformer::{Projection, Transformer2DModel};
