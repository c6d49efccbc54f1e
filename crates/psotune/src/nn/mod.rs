//! Layers that mirror diffusers / transformers modules, loaded strictly.

mod layers;
pub mod lora;
pub mod modules;
pub mod weights;

pub use layers::{Conv2d, GroupNorm, LayerNorm, Linear};
pub use lora::{anchor_lora, apply_lora, apply_lora_with, attach_lora, make_trainable, master_dtype, merge_lora, Lora, LoraConfig, LoraInit, LoraSet, LoraSwitch, LoraTargets, LoraWeights, TargetPreset};
pub use modules::{LayerMut, Modules};
pub use weights::Weights;
