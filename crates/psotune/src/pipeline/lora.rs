//! Sampling with a LoRA file on the pipeline's UNet (`psotune sample --lora`).

use std::path::Path;

use super::sample::Pipeline;
use crate::error::{Error, Result};
use crate::export;
use crate::nn::{LoraSet, LoraSwitch};

impl Pipeline {
    /// Attach the adapters of a LoRA file (diffusers/PEFT or kohya, told
    /// apart by its keys) to the UNet, scaled by `scale` (diffusers'
    /// `lora_scale`; 1 = as trained). Returns the set, whose switch turns
    /// them off again.
    pub fn load_lora(&mut self, path: &Path, scale: f64) -> Result<LoraSet> {
        if !scale.is_finite() {
            return Err(Error::invalid(format!("LoRA scale must be a finite number, got {scale}")));
        }
        let switch = LoraSwitch::new();
        switch.set_multiplier(scale);
        export::load_lora(path, &mut self.unet, &switch)
    }
}
