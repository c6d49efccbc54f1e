//! `psotune export`: a run's checkpoint as a LoRA file other tools load
//! (diffusers/PEFT or kohya, text-encoder adapters included) or as a merged
//! UNet in diffusers layout (merged text encoders in `text_encoder/`,
//! `text_encoder_2/` beside it when they were trained).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Tensor;

use super::config::RunConfig;
use crate::error::{Error, Result};
use crate::export::{read_lora, save_lora, save_merged_text_encoder, save_merged_unet, split_components, text_encoder_of, LoraFormat, UNetLayout, TEXT_ENCODERS};
use crate::nn::LoraWeights;
use crate::pipeline::{load, LoadOptions, ModelFolder};
use crate::train::{RunDir, CONFIG_FILE};

/// What `psotune export --format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `pytorch_lora_weights.safetensors`, what diffusers' `load_lora_weights` reads.
    Diffusers,
    /// kohya-ss keys, what ComfyUI and A1111 read.
    Kohya,
    /// A full UNet folder with the adapters (or fine-tuned tensors) folded in.
    Merged,
}

impl FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "diffusers" | "peft" => Ok(Self::Diffusers),
            "kohya" => Ok(Self::Kohya),
            "merged" => Ok(Self::Merged),
            _ => Err(Error::invalid(format!("unknown export format {s:?} (expected diffusers, kohya or merged)"))),
        }
    }
}

/// Group `<path>.lora_A.weight` / `<path>.lora_B.weight` tensors into
/// adapters; None when the checkpoint holds no LoRA keys (full fine-tuning).
fn adapters(tensors: &HashMap<String, Tensor>, alpha_of: impl Fn(&str) -> f64) -> Result<Option<Vec<LoraWeights>>> {
    let mut parts: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(p) = k.strip_suffix(".lora_A.weight") {
            parts.entry(p.to_string()).or_default().0 = Some(t.clone());
        } else if let Some(p) = k.strip_suffix(".lora_B.weight") {
            parts.entry(p.to_string()).or_default().1 = Some(t.clone());
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (path, (a, b)) in parts {
        let (Some(lora_a), Some(lora_b)) = (a, b) else {
            return Err(Error::invalid(format!("checkpoint has only one of {path}.lora_A / lora_B")));
        };
        out.push(LoraWeights { alpha: alpha_of(&path), path, lora_a, lora_b });
    }
    Ok(Some(out))
}

/// Export checkpoint `step` (default: the newest) of the run in `run_dir`
/// to `out`: a file for the LoRA formats (a directory gets
/// `pytorch_lora_weights.safetensors` inside), a directory for `merged`.
/// Returns what was written.
pub fn export_run(run_dir: &Path, format: ExportFormat, out: &Path, step: Option<u64>) -> Result<PathBuf> {
    let cfg_path = run_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = RunConfig::from_toml(&text, &cfg_path, &[])?;
    let run = RunDir::open(run_dir, &text)?;
    let all = run.checkpoints()?;
    let ck = match step {
        Some(s) => all.into_iter().find(|c| c.step() == s).ok_or_else(|| Error::Checkpoint { path: run.checkpoints_dir(), msg: format!("no checkpoint of step {s}") })?,
        None => all.into_iter().last().ok_or_else(|| Error::Checkpoint { path: run.checkpoints_dir(), msg: "no checkpoint yet".into() })?,
    };
    let tensors = ck.read_weights()?;

    let folder = ModelFolder::open(&cfg.model.path)?;
    let opts = LoadOptions { variant: cfg.model.variant.clone(), ..Default::default() };
    let mut unet = load::load_unet(&folder, &opts)?;
    // Adapters started from a file keep that file's alphas.
    let file_alphas: HashMap<String, f64> = match &cfg.lora.init_from {
        Some(f) => read_lora(f, &mut unet)?.into_iter().map(|w| (w.path, w.alpha)).collect(),
        None => HashMap::new(),
    };
    let (_, te_alpha, _) = cfg.lora.text_encoder_settings();
    let default_alpha = |p: &str| if text_encoder_of(p).is_some() { te_alpha } else { cfg.lora.alpha };
    let lora = adapters(&tensors, |p| file_alphas.get(p).copied().unwrap_or_else(|| default_alpha(p)))?;

    match (format, lora) {
        (ExportFormat::Merged, lora) => {
            let overrides: Vec<(String, Tensor)> = if lora.is_some() { Vec::new() } else { tensors.into_iter().collect() };
            let (unet_lora, te_lora) = split_components(lora.as_deref().unwrap_or(&[]));
            save_merged_unet(&folder.component_dir("unet"), &unet_lora, 1.0, &overrides, out)?;
            // Merged text encoders go beside the UNet files, in subfolders
            // named as in a pipeline folder.
            for (i, part) in te_lora.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let name = TEXT_ENCODERS[i];
                save_merged_text_encoder(&folder.component_dir(name), part, 1.0, &out.join(name))?;
            }
            Ok(out.to_path_buf())
        }
        (_, None) => Err(Error::invalid(format!(
            "run {} fine-tuned full weights, not LoRA adapters: export it with --format merged",
            run_dir.display()
        ))),
        (f, Some(weights)) => {
            let file = if out.is_dir() { out.join("pytorch_lora_weights.safetensors") } else { out.to_path_buf() };
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let lf = if f == ExportFormat::Kohya { LoraFormat::Kohya } else { LoraFormat::Peft };
            save_lora(&file, &weights, lf, &UNetLayout::of(&unet))?;
            Ok(file)
        }
    }
}
