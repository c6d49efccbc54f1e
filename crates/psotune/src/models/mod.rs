//! The diffusers-compatible model stack: one struct per diffusers module,
//! built from the folder's own `config.json`, field names equal to the
//! safetensors key segments.

pub mod blocks;
pub mod clip;
pub mod evaluator;
pub mod open_clip;
pub mod unet;
pub mod vae;
