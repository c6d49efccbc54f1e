//! Layers that mirror diffusers / transformers modules, loaded strictly.

mod layers;
pub mod weights;

pub use layers::{Conv2d, GroupNorm, LayerNorm, Linear};
pub use weights::Weights;
