//! Text-to-image sampling, step for step what diffusers' pipelines do:
//! latents = init_latents * init_noise_sigma; for each timestep: scale the
//! input, predict (with classifier-free guidance when asked), step; decode.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::defaults::{SamplerKind, SamplingDefaults};
use super::folder::{Family, ModelFolder};
use super::load::{self, LoadOptions, TextEncoder};
use super::text::{encode_prompts, PromptEmbeds};
use crate::diffusion::{self, NoiseRng, Sampler, SchedulerConfig, Timesteps};
use crate::error::{Error, Result};
use crate::models::unet::{guidance_scale_embedding, AddedCond, UNet2DConditionModel};
use crate::models::vae::AutoencoderKL;

/// A loaded text-to-image pipeline.
pub struct Pipeline {
    pub folder: ModelFolder,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub text_encoders: Vec<TextEncoder>,
    pub scheduler: SchedulerConfig,
    /// Sampling settings the folder asks for, sizes resolved.
    pub defaults: SamplingDefaults,
    pub force_zeros_for_empty_prompt: bool,
    pub dtype: DType,
    pub device: Device,
}

/// One sampling request; `None` fields take the model's defaults.
#[derive(Debug, Clone, Default)]
pub struct SampleRequest {
    pub prompts: Vec<String>,
    pub negative_prompt: Option<String>,
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub timesteps: Option<Vec<usize>>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub guidance: Option<f64>,
    /// Seeds the initial latents (unless given) and every step's noise.
    pub seed: u64,
    /// Unit-variance initial noise [B, C, H/f, W/f], as diffusers' `latents=`.
    pub init_latents: Option<Tensor>,
    /// Noise for stochastic steps, indexed by step (reproducing another
    /// tool's draws exactly); `None` draws it from `seed`.
    pub step_noise: Option<Vec<Tensor>>,
}

/// What a sampling run produced.
pub struct SampleOutput {
    /// Final latents (before the VAE), [B, C, h, w].
    pub latents: Tensor,
    /// Decoded images in [0, 1], [B, 3, H, W] f32.
    pub images: Tensor,
    /// The settings actually used.
    pub sampler: SamplerKind,
    pub timesteps: Vec<f64>,
    pub guidance: f64,
}

/// What [`Pipeline::denoise`] produced.
pub struct Chain {
    /// Final latents, [B, C, h, w].
    pub latents: Tensor,
    /// The sampler's clean estimate after the first step: what a 1-step
    /// sample of a distilled model at the same first timestep returns.
    pub first_x0: Tensor,
}

impl Pipeline {
    pub fn load(root: &Path, opts: &LoadOptions) -> Result<Self> {
        let folder = ModelFolder::open(root)?;
        let scheduler = SchedulerConfig::from_file(folder.component_dir("scheduler").join("scheduler_config.json"))?;
        let unet = load::load_unet(&folder, opts)?;
        let vae = load::load_vae(&folder, opts)?;
        let mut text_encoders = vec![load::load_text_encoder(&folder, "text_encoder", "tokenizer", opts)?];
        if folder.family == Family::Sdxl {
            text_encoders.push(load::load_text_encoder(&folder, "text_encoder_2", "tokenizer_2", opts)?);
        }
        let mut defaults = SamplingDefaults::for_folder(&folder)?;
        // Native size: the UNet's sample size in latents times the VAE factor.
        let (h, w) = unet.config().sample_size.unwrap_or((64, 64));
        let f = vae.config().downsampling_factor();
        defaults.width.get_or_insert(w * f);
        defaults.height.get_or_insert(h * f);
        if unet.config().time_cond_proj_dim.is_some() && defaults.guidance == 0.0 {
            defaults.guidance = super::defaults::LCM_GUIDANCE;
        }
        let force_zeros_for_empty_prompt = load::force_zeros_for_empty_prompt(root)?;
        Ok(Self {
            folder,
            unet,
            vae,
            text_encoders,
            scheduler,
            defaults,
            force_zeros_for_empty_prompt,
            dtype: opts.compute_dtype(),
            device: opts.device.clone(),
        })
    }

    pub fn family(&self) -> Family {
        self.folder.family
    }

    /// The VAE's spatial downsampling factor (8 for SD).
    pub fn vae_factor(&self) -> usize {
        self.vae.config().downsampling_factor()
    }

    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<PromptEmbeds> {
        encode_prompts(self.family(), &self.text_encoders, prompts, self.dtype, &self.device)
    }

    /// The unconditional embedding for classifier-free guidance: SDXL
    /// pipelines use zeros when no negative prompt is given
    /// (`force_zeros_for_empty_prompt`), SD encodes the empty string.
    pub fn negative_embeds(&self, negative: Option<&str>, batch: usize, cond: &PromptEmbeds) -> Result<PromptEmbeds> {
        if negative.is_none() && self.family() == Family::Sdxl && self.force_zeros_for_empty_prompt {
            return cond.zeros_like();
        }
        let text = negative.unwrap_or("");
        self.encode_prompts(&vec![text; batch])
    }

    /// SDXL's micro-conditioning: (original size, crop top-left, target
    /// size), diffusers' defaults for a plain text-to-image call.
    pub fn default_time_ids(&self, batch: usize, height: usize, width: usize) -> Result<Tensor> {
        let ids = [height as f32, width as f32, 0.0, 0.0, height as f32, width as f32];
        Ok(Tensor::new(&ids, &self.device)?.unsqueeze(0)?.repeat((batch, 1))?.to_dtype(self.dtype)?)
    }

    /// Whether the UNet takes the guidance scale as an input embedding
    /// (`time_cond_proj_dim`: the full LCM UNets) instead of through
    /// classifier-free guidance. Such a model is never run twice per step.
    pub fn embeds_guidance(&self) -> bool {
        self.unet.config().time_cond_proj_dim.is_some()
    }

    /// The network's raw output for latents `x` (already scaled by the
    /// sampler) at timestep `t` (one per sample, or one for all). `guidance`
    /// reaches a UNet that embeds it (as diffusers'
    /// LatentConsistencyModelPipeline: `timestep_cond` is the embedding of
    /// guidance - 1); other UNets ignore it (their guidance is
    /// classifier-free, done by the caller).
    pub fn predict(&self, x: &Tensor, t: &Tensor, embeds: &PromptEmbeds, time_ids: Option<&Tensor>, guidance: f64) -> Result<Tensor> {
        let added = match (self.family(), &embeds.pooled, time_ids) {
            (Family::Sdxl, Some(p), Some(ids)) => Some(AddedCond { text_embeds: p.clone(), time_ids: ids.clone() }),
            (Family::Sdxl, _, _) => return Err(Error::invalid("SDXL prediction needs pooled text embeddings and time ids")),
            (Family::Sd, _, _) => None,
        };
        let cond = match self.unet.config().time_cond_proj_dim {
            Some(dim) => {
                let w = vec![(guidance - 1.0) as f32; x.dim(0)?];
                Some(guidance_scale_embedding(&w, dim, &self.device)?.to_dtype(self.dtype)?)
            }
            None => None,
        };
        Ok(self.unet.forward_with_cond(x, t, &embeds.hidden, added.as_ref(), cond.as_ref())?)
    }

    /// Build the sampler for a request.
    pub fn sampler(&self, kind: SamplerKind, steps: usize, timesteps: Option<&[usize]>) -> Result<Box<dyn Sampler>> {
        let ts = match timesteps {
            Some(t) => Timesteps::Explicit(t.iter().map(|&v| v as f64).collect()),
            None => Timesteps::Steps(steps),
        };
        // Turbo models are sampled with `trailing` spacing whatever their
        // scheduler config says (SD-Turbo's model card; a 1-step chain must
        // start at t = 999).
        let mut config = self.scheduler.clone();
        if kind == SamplerKind::Turbo {
            config.timestep_spacing = diffusion::TimestepSpacing::Trailing;
        }
        let kind = match kind {
            SamplerKind::Turbo => diffusion::SamplerKind::EulerAncestral,
            SamplerKind::Dmd2 => diffusion::SamplerKind::Dmd2,
            SamplerKind::Lcm => diffusion::SamplerKind::Lcm,
            SamplerKind::Ddim => diffusion::SamplerKind::Ddim { eta: 0.0 },
        };
        Ok(diffusion::build_sampler(kind, &config, &ts)?)
    }

    pub fn sample(&self, req: &SampleRequest) -> Result<SampleOutput> {
        if req.prompts.is_empty() {
            return Err(Error::invalid("no prompt given"));
        }
        let d = &self.defaults;
        let kind = req.sampler.unwrap_or(d.sampler);
        // Explicit timesteps only carry over from the defaults when the
        // sampler and step count are the defaults' own.
        let default_ts = if kind == d.sampler && req.steps.is_none_or(|s| s == d.steps) { d.timesteps.clone() } else { None };
        let timesteps = req.timesteps.clone().or(default_ts);
        let steps = timesteps.as_ref().map(|t| t.len()).or(req.steps).unwrap_or(d.steps);
        let guidance = req.guidance.unwrap_or(d.guidance);
        let f = self.vae_factor();
        let (width, height) = (req.width.or(d.width).unwrap_or(512), req.height.or(d.height).unwrap_or(512));
        if width % f != 0 || height % f != 0 || width == 0 || height == 0 {
            return Err(Error::invalid(format!("image size {width}x{height} must be a positive multiple of the VAE factor {f}")));
        }
        let sampler = self.sampler(kind, steps, timesteps.as_deref())?;
        let batch = req.prompts.len();
        let channels = self.unet.config().in_channels;
        let latent_shape = (batch, channels, height / f, width / f);
        let mut rng = NoiseRng::new(req.seed);

        let init = match &req.init_latents {
            Some(l) => {
                if l.dims() != [latent_shape.0, latent_shape.1, latent_shape.2, latent_shape.3] {
                    return Err(Error::invalid(format!(
                        "init latents have shape {:?}, expected {:?} for {batch} prompt(s) at {width}x{height}",
                        l.dims(),
                        latent_shape
                    )));
                }
                l.to_device(&self.device)?.to_dtype(DType::F32)?
            }
            None => rng.randn(latent_shape, DType::F32, &self.device)?,
        };

        let prompts: Vec<&str> = req.prompts.iter().map(String::as_str).collect();
        let cond = self.encode_prompts(&prompts)?;
        let step_noise = |i: usize, shape: &candle_core::Shape| -> Result<Tensor> {
            match &req.step_noise {
                Some(list) => match list.get(i) {
                    Some(z) => Ok(z.to_device(&self.device)?.to_dtype(DType::F32)?),
                    None => Err(Error::invalid(format!("step {i} needs noise but only {} noise tensors were given", list.len()))),
                },
                None => Ok(rng.randn(shape, DType::F32, &self.device)?),
            }
        };
        let chain = self.denoise(sampler.as_ref(), &init, &cond, guidance, req.negative_prompt.as_deref(), (width, height), step_noise)?;
        let x = chain.latents;

        let decoded = self.vae.image_from_latents(&x.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?;
        let images = ((decoded / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.detach();
        Ok(SampleOutput { latents: x, images, sampler: kind, timesteps: sampler.timesteps().to_vec(), guidance })
    }

    /// The denoising chain of `sampler` from unit-variance noise `init`
    /// ([B, C, h, w]) under the prompts' embeddings `cond`, with
    /// classifier-free guidance when `guidance` > 1 (`negative` as in
    /// [`SampleRequest`]); `step_noise(i, shape)` gives the fresh noise of
    /// each stochastic step i, in order. Latents only, no decoding, detached.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        sampler: &dyn Sampler,
        init: &Tensor,
        cond: &PromptEmbeds,
        guidance: f64,
        negative: Option<&str>,
        size: (usize, usize),
        mut step_noise: impl FnMut(usize, &candle_core::Shape) -> Result<Tensor>,
    ) -> Result<Chain> {
        let (embeds, time_ids) = self.guided_inputs(cond, init.dim(0)?, guidance, negative, size)?;

        // The sampler's math runs in f32 whatever the model dtype, like
        // diffusers' schedulers upcasting in `step`.
        let mut x = (init * sampler.init_noise_sigma())?;
        let mut first_x0 = None;
        for i in 0..sampler.num_steps() {
            let out = self.guided_output(sampler, i, &x, &embeds, guidance, time_ids.as_ref())?;
            let noise = if sampler.needs_noise(i) { Some(step_noise(i, x.shape())?) } else { None };
            // Detached: sampling never needs gradients, and with trainable
            // adapters attached every op would otherwise keep its inputs
            // alive (a reference set of 1,700 samples held 21 GB of graph).
            let step = sampler.step(i, &x, &out, noise.as_ref())?;
            if i == 0 {
                first_x0 = Some(step.x0.detach());
            }
            x = step.prev.detach();
        }
        let first_x0 = first_x0.unwrap_or_else(|| x.clone());
        Ok(Chain { latents: x, first_x0 })
    }

    /// The sampler's clean estimate after its first step from noise `init`,
    /// with the graph kept (training through a 1-step sample).
    pub fn first_step_x0(&self, sampler: &dyn Sampler, init: &Tensor, cond: &PromptEmbeds, guidance: f64, negative: Option<&str>, size: (usize, usize)) -> Result<Tensor> {
        let (embeds, time_ids) = self.guided_inputs(cond, init.dim(0)?, guidance, negative, size)?;
        let x = (init * sampler.init_noise_sigma())?;
        let out = self.guided_output(sampler, 0, &x, &embeds, guidance, time_ids.as_ref())?;
        Ok(sampler.transition(0, &x, &out)?.x0)
    }

    /// Whether sampling at `guidance` runs classifier-free guidance (a
    /// second, unconditional pass): above 1, unless the UNet embeds the
    /// scale instead.
    pub fn uses_cfg(&self, guidance: f64) -> bool {
        guidance > 1.0 && !self.embeds_guidance()
    }

    /// The embeddings the network sees for `batch` samples of `cond`
    /// ([negative; conditional] when guidance > 1) and SDXL's time ids.
    fn guided_inputs(&self, cond: &PromptEmbeds, batch: usize, guidance: f64, negative: Option<&str>, (width, height): (usize, usize)) -> Result<(PromptEmbeds, Option<Tensor>)> {
        let embeds = if self.uses_cfg(guidance) { PromptEmbeds::cat(&self.negative_embeds(negative, batch, cond)?, cond)? } else { cond.clone() };
        let time_ids = match self.family() {
            Family::Sdxl => Some(self.default_time_ids(embeds.batch()?, height, width)?),
            Family::Sd => None,
        };
        Ok((embeds, time_ids))
    }

    /// The network's output for step i of `sampler` at sample x, guided
    /// when `embeds` holds [negative; conditional] (guidance > 1), in f32.
    fn guided_output(&self, sampler: &dyn Sampler, i: usize, x: &Tensor, embeds: &PromptEmbeds, guidance: f64, time_ids: Option<&Tensor>) -> Result<Tensor> {
        let cfg = self.uses_cfg(guidance);
        let (batch, n) = (x.dim(0)?, embeds.batch()?);
        let xin = sampler.scale_model_input(x, i)?;
        let xin = if cfg { Tensor::cat(&[&xin, &xin], 0)? } else { xin };
        let tt = Tensor::full(sampler.timesteps()[i] as f32, n, &self.device)?;
        let out = self.predict(&xin.to_dtype(self.dtype)?, &tt, embeds, time_ids, guidance)?.to_dtype(DType::F32)?;
        if !cfg {
            return Ok(out);
        }
        let u = out.narrow(0, 0, batch)?;
        let c = out.narrow(0, batch, batch)?;
        Ok((&u + ((c - &u)? * guidance)?)?)
    }
}

/// Read `--init-latents`: a safetensors file with one tensor named `latents`.
pub fn read_init_latents(path: &Path) -> Result<Tensor> {
    let tensors = crate::nn::weights::read_safetensors(path)?;
    match tensors.get("latents") {
        Some(t) if t.rank() == 4 => Ok(t.to_dtype(DType::F32)?),
        Some(t) => Err(Error::Safetensors {
            path: path.to_path_buf(),
            msg: format!("tensor `latents` has shape {:?}; expected [batch, channels, height, width]", t.dims()),
        }),
        None => {
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            Err(Error::Safetensors { path: path.to_path_buf(), msg: format!("no tensor named `latents` (found {names:?})") })
        }
    }
}
