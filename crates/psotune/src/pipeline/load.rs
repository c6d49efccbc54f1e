//! Building the models of a diffusers folder, strictly: each component's
//! weights must match its config exactly, every offending key is named.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::folder::{Family, ModelFolder};
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::nn::Weights;

/// How to load a model folder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype of the weights (files in another dtype are converted).
    pub dtype: DType,
    pub device: Device,
    /// Weight-file variant to prefer (`fp16` for `*.fp16.safetensors`).
    pub variant: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu, variant: None }
    }
}

/// A device by name: `cpu`, `cuda` (GPU 0) or `cuda:N`. A CUDA device in a
/// build without the `cuda` feature is an error that says so.
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = || Error::invalid(format!("unknown device {s:?} (expected cpu, cuda or cuda:N)"));
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(rest) = s.strip_prefix("cuda") else { return Err(bad()) };
    let ordinal = match rest.strip_prefix(':') {
        Some(n) => n.parse().map_err(|_| bad())?,
        None if rest.is_empty() => 0,
        None => return Err(bad()),
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::invalid(format!("device {s:?}: this psotune was built without CUDA (build it with `--features cuda`, see the README)")));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::invalid(format!("device {s:?}: {e}")))
}

impl LoadOptions {
    /// The dtype the loaded model computes in: `dtype`, except bf16 on the
    /// CPU, where candle 0.11 has no bf16 matrix product or convolution:
    /// there the weights are rounded to bf16 (the values a GPU run holds)
    /// and computed with in f32, so that one config runs on both.
    pub fn compute_dtype(&self) -> DType {
        if self.bf16_through_f32() {
            DType::F32
        } else {
            self.dtype
        }
    }

    fn bf16_through_f32(&self) -> bool {
        self.dtype == DType::BF16 && self.device.is_cpu()
    }
}

/// Build one component from its weight files and check that nothing was
/// missing, unused or mis-shaped. A build error caused by bad weights is
/// reported as the weight problem, which is the useful message.
pub fn load_component<T>(
    folder: &ModelFolder,
    component: &str,
    opts: &LoadOptions,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let files = folder.weight_files(component, opts.variant.as_deref())?;
    let weights = if opts.bf16_through_f32() {
        Weights::from_files_rounded(&files, DType::BF16, DType::F32, &opts.device)?
    } else {
        Weights::from_files(&files, opts.dtype, &opts.device)?
    };
    match build(weights.var_builder()) {
        Ok(model) => {
            weights.finish()?;
            Ok(model)
        }
        Err(e) => {
            weights.finish()?;
            Err(Error::ModelFolder { path: folder.component_dir(component), msg: format!("cannot build the model: {e}") })
        }
    }
}

/// A text encoder with its tokenizer.
pub struct TextEncoder {
    pub tokenizer: ClipTokenizer,
    pub model: ClipTextModel,
}

pub fn load_text_encoder(folder: &ModelFolder, which: &str, tokenizer: &str, opts: &LoadOptions) -> Result<TextEncoder> {
    let cfg = ClipTextConfig::from_file(folder.component_dir(which).join("config.json"))?;
    let with_projection = folder.components.get(which).is_some_and(|(_, cls)| cls == "CLIPTextModelWithProjection");
    let model = load_component(folder, which, opts, |vb| ClipTextModel::load(vb, &cfg, with_projection))?;
    let tokenizer = ClipTokenizer::from_dir(folder.component_dir(tokenizer))?;
    Ok(TextEncoder { tokenizer, model })
}

pub fn load_unet(folder: &ModelFolder, opts: &LoadOptions) -> Result<UNet2DConditionModel> {
    let cfg = UNetConfig::from_file(folder.component_dir("unet").join("config.json"))?;
    if folder.family == Family::Sdxl && cfg.addition_embed.is_none() {
        return Err(Error::config(
            folder.component_dir("unet").join("config.json"),
            "an SDXL pipeline needs addition_embed_type = \"text_time\"",
        ));
    }
    load_component(folder, "unet", opts, |vb| UNet2DConditionModel::load(vb, &cfg))
}

/// The VAE, in f32 when its config says `force_upcast` and the pipeline
/// computes in half precision (the SDXL VAE overflows in f16; diffusers'
/// pipelines upcast it for every decode). It takes and returns tensors of
/// the pipeline's dtype either way.
pub fn load_vae(folder: &ModelFolder, opts: &LoadOptions) -> Result<AutoencoderKL> {
    let cfg = VaeConfig::from_file(folder.component_dir("vae").join("config.json"))?;
    let opts = vae_options(&cfg, opts);
    load_component(folder, "vae", &opts, |vb| AutoencoderKL::load(vb, &cfg))
}

/// The load options of the VAE: `opts` with f32 for a `force_upcast` VAE
/// in an f16 or bf16 pipeline.
fn vae_options(cfg: &VaeConfig, opts: &LoadOptions) -> LoadOptions {
    let half = matches!(opts.dtype, DType::F16 | DType::BF16);
    LoadOptions { dtype: if cfg.force_upcast && half { DType::F32 } else { opts.dtype }, ..opts.clone() }
}

/// `force_zeros_for_empty_prompt` from model_index.json (SDXL pipelines
/// register it; diffusers' default is true).
pub fn force_zeros_for_empty_prompt(root: &Path) -> Result<bool> {
    let v: serde_json::Value = crate::error::read_json(&root.join("model_index.json"))?;
    Ok(v.get("force_zeros_for_empty_prompt").and_then(|b| b.as_bool()).unwrap_or(true))
}
