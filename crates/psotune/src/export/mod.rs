//! LoRA files other tools load, and loading them back: diffusers / PEFT
//! (`pytorch_lora_weights.safetensors`, what `pipe.load_lora_weights`
//! reads), kohya's format (what ComfyUI and A1111 read), and a merged full
//! UNet (and text encoders) in diffusers layout. Text-encoder adapters ride
//! along in the same files (see `components`).
//!
//! ```text
//! export::save_lora(&out, &lora.weights(), LoraFormat::Kohya, &UNetLayout::of(&unet))?;
//! let lora = export::load_lora(&file, &mut unet, &LoraSwitch::new())?;   // either format
//! ```

mod components;
mod kohya;
mod merged;
mod peft;
mod st;

use std::path::Path;

use crate::error::{Error, Result};
use crate::models::unet::UNet2DConditionModel;
use crate::models::clip::ClipTextModel;
use crate::nn::{attach_lora, LoraSet, LoraSwitch, LoraWeights};

pub use kohya::{kohya_name, ldm_path, read_kohya, save_kohya, to_kohya_tensors, KohyaNames, UNetLayout};
pub use components::{attach_all, prefixed, split_components, text_encoder_of, TEXT_ENCODERS};
pub use merged::{save_merged_text_encoder, save_merged_unet};
pub use peft::{read_peft, save_peft, to_peft_tensors};

/// A LoRA file that does not fit (names the file).
pub(crate) fn lora_error(path: &Path, msg: String) -> Error {
    Error::Invalid(format!("LoRA {}: {msg}", path.display()))
}

/// A LoRA file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// diffusers / PEFT: `unet.<module path>.lora_A.weight`, alpha in the
    /// `lora_adapter_metadata` of the safetensors header.
    Peft,
    /// kohya-ss: `lora_unet_<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
}

impl LoraFormat {
    /// Tell the format from the key names.
    pub fn detect<'a>(keys: impl IntoIterator<Item = &'a String>) -> Option<Self> {
        for k in keys {
            if k.ends_with(".lora_down.weight") || k.ends_with(".lora_up.weight") {
                return Some(Self::Kohya);
            }
            if k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight") {
                return Some(Self::Peft);
            }
        }
        None
    }
}

/// Write adapters in `format`. Kohya names depend on the UNet's layout.
pub fn save_lora(path: &Path, weights: &[LoraWeights], format: LoraFormat, layout: &UNetLayout) -> Result<()> {
    match format {
        LoraFormat::Peft => save_peft(path, weights),
        LoraFormat::Kohya => save_kohya(path, weights, layout, layout.default_names()),
    }
}

/// Read a LoRA file of either format: adapters for `unet`'s modules and,
/// prefixed `text_encoder.` / `text_encoder_2.`, for the text encoders'.
pub fn read_lora(path: &Path, unet: &mut UNet2DConditionModel) -> Result<Vec<LoraWeights>> {
    let (tensors, metadata) = st::read_with_metadata(path)?;
    match LoraFormat::detect(tensors.keys()) {
        Some(LoraFormat::Peft) => read_peft(path, &tensors, metadata.as_ref()),
        Some(LoraFormat::Kohya) => read_kohya(path, &tensors, unet),
        None => Err(lora_error(
            path,
            "no LoRA keys (neither `.lora_A.weight` / `.lora_B.weight` nor `.lora_down.weight` / `.lora_up.weight`)".into(),
        )),
    }
}

/// Read a LoRA file (either format) and attach its adapters to `unet`,
/// under `switch`. A file with text-encoder adapters is an error here (they
/// would be dropped): load it with [`load_lora_all`].
pub fn load_lora(path: &Path, unet: &mut UNet2DConditionModel, switch: &LoraSwitch) -> Result<LoraSet> {
    let weights = read_lora(path, unet)?;
    let te: Vec<&str> = weights.iter().filter(|w| text_encoder_of(&w.path).is_some()).map(|w| w.path.as_str()).collect();
    if !te.is_empty() {
        return Err(lora_error(path, format!("has text-encoder adapters, which a UNet alone cannot take ({}); load it into a pipeline", te.join(", "))));
    }
    attach_lora(unet, &weights, switch).map_err(|e| lora_error(path, e.to_string()))
}

/// Read a LoRA file (either format) and attach all its adapters, the UNet's
/// to `unet` and the text encoders' to `text_encoders` (in pipeline order),
/// under one `switch`. The set's paths carry the component prefixes.
pub fn load_lora_all(path: &Path, unet: &mut UNet2DConditionModel, text_encoders: &mut [&mut ClipTextModel], switch: &LoraSwitch) -> Result<LoraSet> {
    let weights = read_lora(path, unet)?;
    attach_all(&weights, unet, text_encoders, switch).map_err(|e| lora_error(path, e.to_string()))
}

#[cfg(test)]
mod tests;
