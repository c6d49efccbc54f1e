//! A UNet with LoRA (and any fully fine-tuned tensors) folded in, saved in
//! diffusers layout (`config.json` + `diffusion_pytorch_model.safetensors`)
//! so that `UNet2DConditionModel.from_pretrained` and we load it as a base model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::st::write_with_metadata;
use crate::error::{Error, Result};
use crate::nn::weights::read_safetensors;
use crate::nn::LoraWeights;
use crate::pipeline::folder::resolve_weights;

/// Read the base UNet from `base_dir` (a diffusers `unet/` folder), replace
/// the tensors in `overrides` (full fine-tuning, by checkpoint name), add
/// `multiplier * alpha/r * B @ A` of every adapter to `<path>.weight`
/// (computed in f32, stored in the file's dtype), and write `out_dir`.
pub fn save_merged_unet(base_dir: &Path, lora: &[LoraWeights], multiplier: f64, overrides: &[(String, Tensor)], out_dir: &Path) -> Result<()> {
    merge_folder(base_dir, lora, multiplier, overrides, out_dir, "diffusion_pytorch_model.safetensors")
}

/// A text encoder folder (`config.json` + `model.safetensors`) with
/// `lora` (paths inside the encoder, `text_model.encoder...`) folded in.
/// Checkpoints saved by transformers 5 have no `text_model.` level for
/// `CLIPTextModel`; the key is looked up in both forms.
pub fn save_merged_text_encoder(base_dir: &Path, lora: &[LoraWeights], multiplier: f64, out_dir: &Path) -> Result<()> {
    merge_folder(base_dir, lora, multiplier, &[], out_dir, "model.safetensors")
}

fn merge_folder(base_dir: &Path, lora: &[LoraWeights], multiplier: f64, overrides: &[(String, Tensor)], out_dir: &Path, file_name: &str) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in resolve_weights(base_dir, None)? {
        tensors.extend(read_safetensors(&f)?);
    }
    for (name, t) in overrides {
        let Some(old) = tensors.get(name) else {
            return Err(Error::invalid(format!("{name} is not a tensor of {}", base_dir.display())));
        };
        if old.dims() != t.dims() {
            return Err(Error::invalid(format!("{name}: shape {:?}, base has {:?}", t.dims(), old.dims())));
        }
        let t = t.to_device(&candle_core::Device::Cpu)?.to_dtype(old.dtype())?;
        tensors.insert(name.clone(), t);
    }
    for w in lora {
        let mut key = format!("{}.weight", w.path);
        if !tensors.contains_key(&key) {
            if let Some(short) = key.strip_prefix("text_model.").filter(|k| tensors.contains_key(*k)) {
                key = short.to_string();
            }
        }
        let Some(base) = tensors.get(&key) else {
            return Err(Error::invalid(format!("LoRA module {} has no {key} in {}", w.path, base_dir.display())));
        };
        let delta = w.delta(base.dims(), multiplier)?.to_device(&candle_core::Device::Cpu)?;
        let merged = (base.to_dtype(DType::F32)? + delta)?.to_dtype(base.dtype())?;
        tensors.insert(key, merged);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let cfg = base_dir.join("config.json");
    std::fs::copy(&cfg, out_dir.join("config.json")).map_err(|e| Error::io(&cfg, e))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_with_metadata(&out_dir.join(file_name), &tensors, Some(meta))
}
