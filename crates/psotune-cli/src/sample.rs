//! `psotune sample`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use psotune::pipeline::{self, image::save_png, LoadOptions, Pipeline, SampleRequest, SamplerKind};

use crate::device;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, ...).
    #[arg(long)]
    model: PathBuf,
    /// The prompt (repeat --prompt for several images in one batch).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Negative prompt for classifier-free guidance.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Number of network calls (default: what the model is made for).
    #[arg(long)]
    steps: Option<usize>,
    /// turbo | dmd2 | lcm | ddim (default: from the model folder).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    /// Explicit timesteps, comma-separated and decreasing, e.g. 999,749,499,249.
    #[arg(long, value_delimiter = ',')]
    timesteps: Option<Vec<usize>>,
    /// Guidance scale: classifier-free (0 or 1: none, as distilled models
    /// use), or for an LCM UNet with a guidance embedding the scale it is
    /// given (default 8.5, as diffusers' LCM pipeline).
    #[arg(long)]
    guidance: Option<f64>,
    /// Random seed of the initial noise and of every stochastic step.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per prompt (each with the next seed).
    #[arg(long, default_value_t = 1)]
    num_images: usize,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// Safetensors file with a tensor `latents` [batch, C, H/f, W/f] of
    /// unit-variance noise, as diffusers' `latents=` argument.
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Weight variant to prefer, e.g. fp16 for *.fp16.safetensors.
    #[arg(long)]
    variant: Option<String>,
    /// A LoRA file for the UNet: diffusers/PEFT (`pytorch_lora_weights.safetensors`)
    /// or kohya (ComfyUI / A1111), told apart by its key names.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Multiplies the LoRA's alpha/rank (0 = the base model, 1 = as trained).
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_scale: f64,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output folder for the PNG files.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: SampleArgs) -> Result<()> {
    if a.num_images == 0 {
        bail!("--num-images must be at least 1");
    }
    let opts = LoadOptions { dtype: device::parse_dtype(&a.dtype)?, device: device::parse_device(&a.device)?, variant: a.variant.clone() };
    let mut pipe = Pipeline::load(&a.model, &opts).with_context(|| format!("loading {}", a.model.display()))?;
    if let Some(path) = &a.lora {
        let lora = pipe.load_lora(path, a.lora_scale).with_context(|| format!("loading LoRA {}", path.display()))?;
        eprintln!("LoRA {}: {} adapters, scale {}", path.display(), lora.len(), a.lora_scale);
    }
    let init_latents = a.init_latents.as_deref().map(pipeline::read_init_latents).transpose()?;
    if init_latents.is_some() && a.num_images > 1 {
        bail!("--init-latents fixes the noise, so --num-images must be 1 (put several latents in the batch instead)");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for k in 0..a.num_images {
        let seed = a.seed + k as u64;
        let req = SampleRequest {
            prompts: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            sampler: a.sampler,
            steps: a.steps,
            timesteps: a.timesteps.clone(),
            width: a.width,
            height: a.height,
            guidance: a.guidance,
            seed,
            init_latents: init_latents.clone(),
            step_noise: None,
        };
        let out = pipe.sample(&req)?;
        for (i, _) in a.prompt.iter().enumerate() {
            let path = a.out.join(format!("{:03}-seed{seed}.png", i));
            save_png(&out.images.get(i)?, &path)?;
            println!("{}", path.display());
        }
        if k == 0 {
            let ts: Vec<String> = out.timesteps.iter().map(|t| format!("{t}")).collect();
            eprintln!("sampler {} timesteps [{}] guidance {}", out.sampler, ts.join(", "), out.guidance);
        }
    }
    Ok(())
}
