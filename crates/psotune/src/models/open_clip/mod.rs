//! open_clip's CLIP (the layout of HPSv2's ViT-H-14 checkpoint), built from
//! the same encoder layers as transformers' CLIP (models/clip/).

mod config;
mod model;

pub use config::{OpenClipConfig, OpenClipPreprocess, OpenClipTextConfig, OpenClipVisionConfig, OPENAI_MEAN, OPENAI_STD};
pub use model::{OpenClipModel, OpenClipText, OpenClipVisual};
