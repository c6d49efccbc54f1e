//! Stage 3: latent consistency distillation (Luo et al. 2023, "LCM"), the
//! recipe of diffusers' `train_lcm_distill_sd_wds.py` with the guidance
//! scale fixed (as LCM-LoRA ships, so the student needs no w-embedding):
//!
//!   n ~ U{0..49}, t = grid[n] (grid = 19, 39, ..., 999), s = t - 20
//!   x_t = forward-noised latent
//!   student:  f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t)
//!   teacher:  one DDIM step t -> s with CFG on the teacher's eps and x0
//!   target:   f_ema(x_s, s) (EMA of the student, no gradient)
//!   loss:     pseudo-Huber(f - target, c)
//!
//! The student samples in 1-4 steps with LCMScheduler.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use psotune::diffusion::{Lcm, NoiseSchedule, SchedulerConfig, Timesteps};
use psotune::models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use psotune::models::unet::UNet2DConditionModel;
use psotune::nn::weights::read_safetensors;
use psotune::nn::Weights;
use psotune::train::{vars_to_tensors, LrSchedule};

use crate::configs;
use crate::dataset::{index_tensor, timestep_tensor, EmojiSet};
use crate::folder::{write_pipeline, PipelineParts};
use crate::stage::{begin, is_done, mark_done, Ema, Trainer, TrainerSpec};
use crate::teacher::{self, preview, unet_config, Captions, Latents};
use crate::Ctx;

/// [B] per-sample scalars as a [B, 1, 1, 1] tensor for broadcasting.
fn per_sample(v: impl Iterator<Item = f64>) -> Result<Tensor> {
    let v: Vec<f32> = v.map(|x| x as f32).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, (n, 1, 1, 1), &Device::Cpu)?)
}

/// x0 from an epsilon prediction: (x - sqrt(1 - ab) eps) / sqrt(ab).
fn x0_from_eps(x: &Tensor, eps: &Tensor, ab: &[f64]) -> Result<Tensor> {
    let s1 = per_sample(ab.iter().map(|a| (1.0 - a).sqrt()))?;
    let inv = per_sample(ab.iter().map(|a| 1.0 / a.sqrt()))?;
    Ok((x - eps.broadcast_mul(&s1)?)?.broadcast_mul(&inv)?)
}

/// The consistency function f = c_skip x + c_out x0 at per-sample timesteps.
fn consistency(lcm: &Lcm, x: &Tensor, x0: &Tensor, t: &[f64]) -> Result<Tensor> {
    let (skip, out): (Vec<f64>, Vec<f64>) = t.iter().map(|&t| lcm.boundary_scalings(t)).unzip();
    Ok((x.broadcast_mul(&per_sample(skip.into_iter())?)? + x0.broadcast_mul(&per_sample(out.into_iter())?)?)?)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let r = &ctx.recipe.distill;
    let teacher_dir = teacher::model_dir(ctx);
    if !is_done(&ctx.work.join("teacher")) && !is_done(&ctx.work.join("distill")) {
        bail!("the teacher stage has not finished ({})", ctx.work.join("teacher").display());
    }
    let Some(dir) = begin(ctx, "distill")? else { return Ok(()) };
    let (tok_dir, vae_dir) = (ctx.out.join("tokenizer"), ctx.out.join("vae"));
    let tok = ClipTokenizer::from_dir(&tok_dir)?;
    let set = EmojiSet::load(&ctx.data, &["twemoji"])?;
    let lat = Latents::encode(&vae_dir, &set)?;
    let caps = Captions::new(&tok, &lat.texts)?;

    // Frozen text encoder: embed every caption once.
    let te_cfg = ClipTextConfig::from_file(teacher_dir.join("text_encoder/config.json"))?;
    let te_map = read_safetensors(&teacher_dir.join("text_encoder/model.safetensors"))?;
    let te_json = te_cfg_json(&teacher_dir)?;
    let te_w = Weights::from_tensors(te_map.clone(), "teacher text encoder", DType::F32, &Device::Cpu);
    let te = ClipTextModel::load(te_w.var_builder(), &te_cfg, false)?;
    te_w.finish()?;
    let all: Vec<usize> = (0..set.len()).collect();
    let mut embeds = Vec::new();
    for chunk in all.chunks(256) {
        embeds.push(te.forward(&caps.batch(chunk, &vec![false; chunk.len()])?)?.last_hidden_state);
    }
    let embeds = Tensor::cat(&embeds, 0)?;
    let empty = te.forward(&caps.batch(&[0], &[true])?)?.last_hidden_state;

    let u_cfg = unet_config()?;
    let unet_map = read_safetensors(&teacher_dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    let t_w = Weights::from_tensors(unet_map.clone(), "teacher unet", DType::F32, &Device::Cpu);
    let teacher_unet = UNet2DConditionModel::load(t_w.var_builder(), &u_cfg)?;
    t_w.finish()?;
    let s_w = Weights::from_tensors(unet_map.clone(), "student", DType::F32, &Device::Cpu).trainable();
    let student = UNet2DConditionModel::load(s_w.var_builder(), &u_cfg)?;
    s_w.finish()?;
    let e_w = Weights::from_tensors(unet_map, "target", DType::F32, &Device::Cpu).trainable();
    let target = UNet2DConditionModel::load(e_w.var_builder(), &u_cfg)?;
    e_w.finish()?;
    let ema = Ema::pair(&s_w.vars(), &e_w.vars(), r.ema)?;
    let target_vars: Vec<_> = e_w.vars().into_iter().map(|(k, v)| (format!("target.{k}"), v)).collect();

    let sched_path = dir.join("scheduler_config.json");
    std::fs::write(&sched_path, serde_json::to_string_pretty(&configs::scheduler(true))?)?;
    let sched_cfg = SchedulerConfig::from_file(&sched_path)?;
    let schedule = NoiseSchedule::from_config(&sched_cfg)?;
    let lcm = Lcm::new(&sched_cfg, &Timesteps::Steps(4))?;
    let k = schedule.num_train_timesteps() / r.ddim_steps;
    let grid: Vec<usize> = (1..=r.ddim_steps).map(|i| i * k - 1).collect();

    let config_text = format!("{}\n# unet {}\n", toml::to_string(r)?, serde_json::to_string(&configs::unet())?);
    let spec = TrainerSpec {
        lr: r.lr,
        weight_decay: 0.0,
        schedule: LrSchedule::WarmupStableDecay { warmup_steps: r.warmup, total_steps: r.steps, decay_steps: r.decay },
        total_steps: r.steps,
        checkpoint_every: r.checkpoint_every,
        seed: r.seed,
        data_len: set.len(),
        grad_clip: 1.0,
    };
    let mut tr = Trainer::open(&dir.join("run"), &config_text, s_w.vars(), target_vars, spec)?;
    let b = r.batch;
    let shape = (b, configs::LATENT_CHANNELS, configs::LATENT_SIZE, configs::LATENT_SIZE);
    while !tr.finished() {
        let idx = tr.data.next_batch(b);
        let z = lat.sample(&idx, &tr.rng.randn(shape, DType::F32, &Device::Cpu)?)?;
        let n: Vec<usize> = (0..b).map(|_| tr.rng.index(grid.len())).collect();
        let t: Vec<f64> = n.iter().map(|&i| grid[i] as f64).collect();
        let s: Vec<f64> = n.iter().map(|&i| if i == 0 { 0.0 } else { grid[i - 1] as f64 }).collect();
        let eps = tr.rng.randn(shape, DType::F32, &Device::Cpu)?;
        let x_t = schedule.add_noise(&z, &eps, &t)?;
        let ab_t: Vec<f64> = t.iter().map(|&t| schedule.alpha_bar(t)).collect();
        let ab_s: Vec<f64> = s.iter().map(|&s| schedule.alpha_bar(s)).collect();
        let cond = embeds.index_select(&index_tensor(&idx)?, 0)?;
        let uncond = empty.broadcast_as(cond.shape())?.contiguous()?;

        // 1. student prediction at t.
        let eps_s = student.forward(&x_t, &timestep_tensor(&t)?, &cond, None)?;
        let pred = consistency(&lcm, &x_t, &x0_from_eps(&x_t, &eps_s, &ab_t)?, &t)?;
        // 2. teacher DDIM step t -> s with classifier-free guidance.
        let both = teacher_unet.forward(
            &Tensor::cat(&[&x_t, &x_t], 0)?,
            &timestep_tensor(&[t.clone(), t.clone()].concat())?,
            &Tensor::cat(&[&cond, &uncond], 0)?,
            None,
        )?;
        let (e_c, e_u) = (both.narrow(0, 0, b)?, both.narrow(0, b, b)?);
        let eps_g = (&e_u + ((&e_c - &e_u)? * r.guidance)?)?;
        let x0_g = x0_from_eps(&x_t, &eps_g, &ab_t)?;
        let x_s = (x0_g.broadcast_mul(&per_sample(ab_s.iter().map(|a| a.sqrt()))?)?
            + eps_g.broadcast_mul(&per_sample(ab_s.iter().map(|a| (1.0 - a).sqrt()))?)?)?;
        // 3. target from the EMA student at s, without gradient.
        let eps_e = target.forward(&x_s, &timestep_tensor(&s)?, &cond, None)?;
        let tgt = consistency(&lcm, &x_s, &x0_from_eps(&x_s, &eps_e, &ab_s)?, &s)?.detach();
        // 4. pseudo-Huber loss.
        let c2 = r.huber_c * r.huber_c;
        let loss = (((pred - tgt)?.sqr()? + c2)?.sqrt()? - r.huber_c)?.mean_all()?;
        tr.update(&loss, Default::default())?;
        ema.update()?;
        if tr.step % (r.checkpoint_every * 5) == 0 || tr.finished() {
            let snapshot = dir.join("model");
            write_student(&snapshot, ctx, &te_json, &te_map, &vars_to_tensors(&s_w.vars()).into_iter().collect())?;
            for steps in [1, 4] {
                preview(&snapshot, &dir.join("samples").join(format!("step-{:06}-{steps}step.png", tr.step)), steps)?;
            }
        }
    }
    tr.finish_bar();
    write_student(&ctx.out, ctx, &te_json, &te_map, &vars_to_tensors(&s_w.vars()).into_iter().collect())?;
    mark_done(&dir, &serde_json::json!({ "steps": r.steps, "guidance": r.guidance }))
}

fn te_cfg_json(teacher_dir: &Path) -> Result<serde_json::Value> {
    let p = teacher_dir.join("text_encoder/config.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| p.display().to_string())?)?)
}

fn write_student(dir: &Path, ctx: &Ctx, te_json: &serde_json::Value, te: &HashMap<String, Tensor>, unet: &HashMap<String, Tensor>) -> Result<()> {
    write_pipeline(
        dir,
        &PipelineParts {
            tokenizer_dir: &ctx.out.join("tokenizer"),
            vae_dir: &ctx.out.join("vae"),
            text_encoder_config: te_json,
            text_encoder: te,
            unet,
            student: true,
        },
    )
}
