//! Sampling with a LoRA file on the pipeline's UNet and text encoders
//! (`psotune sample --lora`).

use std::path::Path;

use super::sample::Pipeline;
use crate::error::{Error, Result};
use crate::export;
use crate::nn::{LoraSet, LoraSwitch};

impl Pipeline {
    /// Attach the adapters of a LoRA file (diffusers/PEFT or kohya, told
    /// apart by its keys) to the UNet and, where it has them, the text
    /// encoders, scaled by `scale` (diffusers' `lora_scale`; 1 = as
    /// trained). Returns the set, whose switch turns them all off again.
    pub fn load_lora(&mut self, path: &Path, scale: f64) -> Result<LoraSet> {
        if !scale.is_finite() {
            return Err(Error::invalid(format!("LoRA scale must be a finite number, got {scale}")));
        }
        let switch = LoraSwitch::new();
        switch.set_multiplier(scale);
        let mut encoders: Vec<&mut crate::models::clip::ClipTextModel> = self.text_encoders.iter_mut().map(|t| &mut t.model).collect();
        export::load_lora_all(path, &mut self.unet, &mut encoders, &switch)
    }
}
