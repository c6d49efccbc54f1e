//! Loading a diffusers folder and running text-to-image sampling.

pub mod defaults;
pub mod folder;
pub mod image;
pub mod load;
mod lora;
pub mod sample;
pub mod text;

pub use defaults::{SamplerKind, SamplingDefaults};
pub use folder::{Family, ModelFolder};
pub use load::{parse_device, LoadOptions};
pub use sample::{read_init_latents, Chain, Pipeline, SampleOutput, SampleRequest};
pub use text::PromptEmbeds;
