//! Stage 2: the multi-step teacher. The UNet and the CLIP text encoder are
//! trained together from scratch on Twemoji with the ordinary epsilon loss
//! at uniform t (captions dropped to "" 10% of the time for classifier-free
//! guidance); an EMA of the weights becomes the teacher.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use psotune::diffusion::{NoiseSchedule, SchedulerConfig};
use psotune::models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use psotune::models::unet::{UNet2DConditionModel, UNetConfig};
use psotune::models::vae::AutoencoderKL;
use psotune::nn::Weights;
use psotune::pipeline::{LoadOptions, Pipeline, SampleRequest};
use psotune::train::LrSchedule;

use crate::configs;
use crate::dataset::{index_tensor, timestep_tensor, EmojiSet};
use crate::folder::{write_pipeline, PipelineParts};
use crate::grid::save_grid;
use crate::init::init_weights;
use crate::stage::{begin, mark_done, Ema, Trainer, TrainerSpec};
use crate::Ctx;

/// Prompts of the preview sheets (training captions and two held-out concepts).
pub const PREVIEW_PROMPTS: [&str; 8] = [
    "an emoji of a grinning face",
    "an emoji of a red heart",
    "an emoji of a dog face",
    "an emoji of a slice of pizza",
    "an emoji of a rocket",
    "an emoji of a penguin",
    "an emoji of a sun",
    "an emoji of a flag: Japan",
];

/// The posterior of every training image, encoded once.
pub struct Latents {
    pub mean: Tensor,
    pub std: Tensor,
    pub scaling: f64,
    pub texts: Vec<String>,
}

impl Latents {
    pub fn encode(vae_dir: &Path, set: &EmojiSet) -> Result<Self> {
        let vae = AutoencoderKL::from_folder(vae_dir, DType::F32, &Device::Cpu)?;
        let (mut means, mut stds) = (Vec::new(), Vec::new());
        for chunk in (0..set.len()).collect::<Vec<_>>().chunks(256) {
            let post = vae.encode(&set.batch(chunk)?)?;
            means.push(post.mean.clone());
            stds.push(post.std()?);
        }
        // contiguous: with one chunk `cat` hands back the narrowed view of
        // the moments, which index_select refuses.
        Ok(Latents {
            mean: Tensor::cat(&means, 0)?.contiguous()?,
            std: Tensor::cat(&stds, 0)?.contiguous()?,
            scaling: vae.config().scaling_factor,
            texts: set.items.iter().map(|i| i.text.clone()).collect(),
        })
    }

    /// Scaled latents of `idx`, sampled from the posterior.
    pub fn sample(&self, idx: &[usize], noise: &Tensor) -> Result<Tensor> {
        let ids = index_tensor(idx)?;
        let m = self.mean.index_select(&ids, 0)?;
        let s = self.std.index_select(&ids, 0)?;
        Ok(((m + (s * noise)?)? * self.scaling)?)
    }
}

/// Token ids of every caption plus the empty prompt.
pub struct Captions {
    pub ids: Vec<Vec<u32>>,
    pub empty: Vec<u32>,
    pub len: usize,
}

impl Captions {
    pub fn new(tok: &ClipTokenizer, texts: &[String]) -> Result<Self> {
        let ids = tok.encode_batch(texts)?;
        Ok(Captions { ids, empty: tok.encode("")?, len: tok.max_length() })
    }

    /// [B, L] ids for `idx`, each replaced by the empty prompt when `drop[i]`.
    pub fn batch(&self, idx: &[usize], drop: &[bool]) -> Result<Tensor> {
        let mut flat = Vec::with_capacity(idx.len() * self.len);
        for (k, &i) in idx.iter().enumerate() {
            flat.extend_from_slice(if drop[k] { &self.empty } else { &self.ids[i] });
        }
        Ok(Tensor::from_vec(flat, (idx.len(), self.len), &Device::Cpu)?)
    }
}

pub fn text_encoder_config(tokenizer_dir: &Path) -> Result<serde_json::Value> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_dir.join("vocab.json"))?)?;
    Ok(configs::text_encoder(vocab.len()))
}

pub fn unet_config() -> Result<UNetConfig> {
    Ok(UNetConfig::from_json(&serde_json::to_string(&configs::unet())?, "emoji unet config")?)
}

/// Split `prefix.`-named tensors out of a checkpoint-style map.
pub fn strip_prefix(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone()))).collect()
}

fn named(vars: Vec<(String, Var)>, prefix: &str) -> Vec<(String, Var)> {
    vars.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect()
}

pub fn model_dir(ctx: &Ctx) -> PathBuf {
    ctx.work.join("teacher").join("model")
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let r = &ctx.recipe.teacher;
    let Some(dir) = begin(ctx, "teacher")? else { return Ok(()) };
    let (tok_dir, vae_dir) = (ctx.out.join("tokenizer"), ctx.out.join("vae"));
    let tok = ClipTokenizer::from_dir(&tok_dir).context("the tokenizer stage must run first")?;
    let set = EmojiSet::load(&ctx.data, &["twemoji"])?;
    let lat = Latents::encode(&vae_dir, &set).context("the vae stage must run first")?;
    let caps = Captions::new(&tok, &lat.texts)?;
    eprintln!("teacher: {} images, latent scale {:.4}", set.len(), lat.scaling);

    let te_json = text_encoder_config(&tok_dir)?;
    let te_cfg_path = dir.join("text_encoder_config.json");
    std::fs::write(&te_cfg_path, serde_json::to_string_pretty(&te_json)?)?;
    let te_cfg = ClipTextConfig::from_file(&te_cfg_path)?;
    let u_cfg = unet_config()?;
    let te_w = Weights::from_tensors(init_weights(|vb| ClipTextModel::load(vb, &te_cfg, false), r.seed)?, "init", DType::F32, &Device::Cpu).trainable();
    let te = ClipTextModel::load(te_w.var_builder(), &te_cfg, false)?;
    te_w.finish()?;
    let u_w = Weights::from_tensors(init_weights(|vb| UNet2DConditionModel::load(vb, &u_cfg), r.seed + 1)?, "init", DType::F32, &Device::Cpu).trainable();
    let unet = UNet2DConditionModel::load(u_w.var_builder(), &u_cfg)?;
    u_w.finish()?;
    let mut params = named(te_w.vars(), "text_encoder.");
    params.extend(named(u_w.vars(), "unet."));
    let n_params: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!("teacher: {n_params} parameters");
    let (ema, ema_vars) = Ema::new(&params, r.ema)?;

    let sched_path = dir.join("scheduler_config.json");
    std::fs::write(&sched_path, serde_json::to_string_pretty(&configs::scheduler(false))?)?;
    let schedule = NoiseSchedule::from_config(&SchedulerConfig::from_file(&sched_path)?)?;
    let config_text = format!(
        "{}\n# unet {}\n# text encoder {}\n",
        toml::to_string(r)?,
        serde_json::to_string(&configs::unet())?,
        serde_json::to_string(&te_json)?
    );
    let spec = TrainerSpec {
        lr: r.lr,
        weight_decay: r.weight_decay,
        schedule: LrSchedule::cosine(r.warmup, r.steps),
        total_steps: r.steps,
        checkpoint_every: r.checkpoint_every,
        seed: r.seed,
        data_len: set.len(),
        grad_clip: 1.0,
    };
    let mut tr = Trainer::open(&dir.join("run"), &config_text, params, ema_vars.clone(), spec)?;
    let b = r.batch;
    let shape = (b, configs::LATENT_CHANNELS, configs::LATENT_SIZE, configs::LATENT_SIZE);
    while !tr.finished() {
        let idx = tr.data.next_batch(b);
        let z = lat.sample(&idx, &tr.rng.randn(shape, DType::F32, &Device::Cpu)?)?;
        let t: Vec<f64> = (0..b).map(|_| tr.rng.index(schedule.num_train_timesteps()) as f64).collect();
        let eps = tr.rng.randn(shape, DType::F32, &Device::Cpu)?;
        let drop: Vec<bool> = (0..b).map(|_| tr.rng.uniform() < r.cond_drop).collect();
        let x_t = schedule.add_noise(&z, &eps, &t)?;
        let ids = caps.batch(&idx, &drop)?;
        let cond = te.forward(&ids)?.last_hidden_state;
        let pred = unet.forward(&x_t, &timestep_tensor(&t)?, &cond, None)?;
        let loss = (pred - &eps)?.sqr()?.mean_all()?;
        tr.update(&loss, Default::default())?;
        ema.update()?;
        if tr.step % (r.checkpoint_every * 4) == 0 || tr.finished() {
            let model = model_dir(ctx);
            write_teacher(&model, &tok_dir, &vae_dir, &te_json, &ema_vars)?;
            preview(&model, &dir.join("samples").join(format!("step-{:06}.png", tr.step)), 25)?;
        }
    }
    tr.finish_bar();
    mark_done(&dir, &serde_json::json!({ "steps": r.steps, "parameters": n_params, "images": set.len() }))
}

/// Write the EMA weights as a DDIM pipeline folder.
fn write_teacher(model: &Path, tok_dir: &Path, vae_dir: &Path, te_json: &serde_json::Value, ema_vars: &[(String, Var)]) -> Result<()> {
    let all: HashMap<String, Tensor> = ema_vars
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("ema.").map(|k| (k.to_string(), v.as_tensor().clone())))
        .collect();
    write_pipeline(
        model,
        &PipelineParts {
            tokenizer_dir: tok_dir,
            vae_dir,
            text_encoder_config: te_json,
            text_encoder: &strip_prefix(&all, "text_encoder."),
            unet: &strip_prefix(&all, "unet."),
            student: false,
        },
    )
}

/// A sheet of the preview prompts (two seeds each) with the folder's defaults.
pub fn preview(model: &Path, png: &Path, steps: usize) -> Result<()> {
    let pipe = Pipeline::load(model, &LoadOptions::default())?;
    let mut prompts: Vec<String> = PREVIEW_PROMPTS.iter().map(|s| s.to_string()).collect();
    prompts.extend(PREVIEW_PROMPTS.iter().map(|s| s.to_string()));
    let req = SampleRequest { prompts, steps: Some(steps), seed: 0, ..Default::default() };
    let out = pipe.sample(&req)?;
    save_grid(&((out.images * 2.0)? - 1.0)?, PREVIEW_PROMPTS.len(), 1, png)?;
    Ok(())
}
