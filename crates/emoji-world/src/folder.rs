//! Writing a complete diffusers StableDiffusionPipeline folder from
//! in-memory weights, for previews during training and for the outputs.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;
use psotune::nn::weights::write_safetensors;

use crate::configs;

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    if from.canonicalize()? == to.canonicalize()? {
        return Ok(()); // writing the folder the parts already live in
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")?;
    Ok(())
}

/// Components that come from earlier stages (copied) or from memory.
pub struct PipelineParts<'a> {
    pub tokenizer_dir: &'a Path,
    pub vae_dir: &'a Path,
    pub text_encoder_config: &'a serde_json::Value,
    pub text_encoder: &'a HashMap<String, Tensor>,
    pub unet: &'a HashMap<String, Tensor>,
    /// LCM student (true) or DDIM teacher (false).
    pub student: bool,
}

/// Write `dir` as a pipeline folder; files are replaced in place.
pub fn write_pipeline(dir: &Path, p: &PipelineParts) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    write_json(&dir.join("model_index.json"), &configs::model_index(p.student))?;
    write_json(&dir.join("scheduler/scheduler_config.json"), &configs::scheduler(p.student))?;
    copy_dir(p.tokenizer_dir, &dir.join("tokenizer"))?;
    copy_dir(p.vae_dir, &dir.join("vae"))?;
    write_json(&dir.join("text_encoder/config.json"), p.text_encoder_config)?;
    write_safetensors(p.text_encoder, &dir.join("text_encoder/model.safetensors"))?;
    write_json(&dir.join("unet/config.json"), &configs::unet())?;
    write_safetensors(p.unet, &dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    Ok(())
}
