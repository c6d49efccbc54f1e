//! Building blocks shared by the UNet and the VAE (diffusers
//! `models/resnet.py`, `models/downsampling.py`, `models/upsampling.py`).

mod resnet;
mod sampling;

pub use resnet::ResnetBlock2D;
pub use sampling::{Downsample2D, Upsample2D};
