//! Loading a diffusers folder and running text-to-image sampling.

pub mod defaults;
pub mod folder;
pub mod image;

pub use defaults::{SamplerKind, SamplingDefaults};
pub use folder::{Family, ModelFolder};
