//! `psotune tune`: fine-tune a (timestep-distilled) diffusion model with
//! PSO or a baseline objective, from a [`RunConfig`].
//!
//! [`run`] is the one training loop. Before it starts, everything that can
//! fail cheaply is checked (config, every data file and image size) and the
//! fixed data is encoded once (VAE latents of targets, text embeddings);
//! references are sampled by the initial model and cached in the run
//! directory. Each optimizer step then does, per micro-batch:
//! 1. batch (targets, references, prompts from the data cursor),
//! 2. noise and timesteps (one t and one eps shared by both images of a pair),
//! 3. policy forward (adapters on), in epsilon space (with text-encoder
//!    LoRA, the prompts are re-encoded in the graph first),
//! 4. frozen forward (the same network with adapters off, no copy),
//! 5. loss, 6. backward;
//!
//! then 7. clip and AdamW step, 8. log, 9. validation grid and checkpoint.
//! The online task (pso.md §3b) has its own loop in [`online`].
//! A checkpoint holds the trained weights, AdamW moments, both RNG streams
//! and the data cursor, so a killed run resumes bit-exactly.

pub mod artefacts;
pub mod config;
pub mod data;
mod export_run;
mod model;
pub mod online;
pub mod transfer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand_chacha::ChaCha8Rng;
use rand::SeedableRng;

use crate::diffusion::{NoiseRng, NoiseRngState, NoiseSchedule};
use crate::error::{Error, Result};
use crate::objectives::{to_epsilon, Objective, Predictions};
use crate::pipeline::{Family, LoadOptions, Pipeline, PromptEmbeds};
use crate::train::{vars_to_tensors, AdamW, AdamWConfig, Checkpoint, CheckpointContents, GradAccumulator, Grads, LossScale, RunDir, ScaledStep};

pub use artefacts::{StepMetrics, METRICS_FILE, REFERENCES_DIR, SAMPLES_DIR};
pub use config::{DataConfig, RunConfig};
pub use data::{TaskFiles, TrainSet};
pub use export_run::{export_run, ExportFormat};
pub use model::Trainable;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Optimizer steps completed (the config's max-steps).
    pub steps: u64,
    /// The step the run started from (0, or the checkpoint resumed).
    pub resumed_from: u64,
    /// Loss of the last step trained in this process (None if none was).
    pub final_loss: Option<f64>,
    pub last_checkpoint: PathBuf,
    pub seconds: f64,
}

/// The micro-batch of step 1.
struct Batch {
    target: Tensor,
    reference: Option<Tensor>,
    embeds: PromptEmbeds,
    /// The prompts behind `embeds`, for re-encoding when the text encoder trains.
    prompts: Vec<String>,
}

fn cat_embeds(list: &[&PromptEmbeds]) -> Result<PromptEmbeds> {
    let hidden = Tensor::cat(&list.iter().map(|e| &e.hidden).collect::<Vec<_>>(), 0)?;
    let pooled = match list.iter().map(|e| e.pooled.as_ref()).collect::<Option<Vec<_>>>() {
        Some(p) if !p.is_empty() => Some(Tensor::cat(&p, 0)?),
        _ => None,
    };
    Ok(PromptEmbeds { hidden, pooled })
}

/// Examples `cursor .. cursor + n` of the set, with their references.
fn gather(set: &TrainSet, refs: Option<&[Tensor]>, cursor: u64, n: usize) -> Result<Batch> {
    let (mut targets, mut references, mut embeds, mut prompts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n as u64 {
        let (ex, r) = set.example_at(cursor + i)?;
        targets.push(set.targets[ex.target].clone());
        if let Some(pool) = refs {
            references.push(pool.get(r).ok_or_else(|| Error::invalid(format!("reference {r} is not in the pool")))?.clone());
        }
        embeds.push(&set.embeds[ex.prompt]);
        prompts.push(set.prompts[ex.prompt].clone());
    }
    let reference = if refs.is_some() { Some(Tensor::stack(&references, 0)?) } else { None };
    Ok(Batch { target: Tensor::stack(&targets, 0)?, reference, embeds: cat_embeds(&embeds)?, prompts })
}

/// The network's prediction for VP samples `x` at timesteps `t`, as epsilon (f32).
fn eps_forward(pipe: &Pipeline, x: &Tensor, t: &[f64], embeds: &PromptEmbeds, schedule: &NoiseSchedule, size: (usize, usize)) -> Result<Tensor> {
    let tt = Tensor::new(t.iter().map(|v| *v as f32).collect::<Vec<_>>(), &pipe.device)?;
    let time_ids = match pipe.family() {
        Family::Sdxl => Some(pipe.default_time_ids(x.dim(0)?, size.1, size.0)?),
        Family::Sd => None,
    };
    let out = pipe.predict(&x.to_dtype(pipe.dtype)?, &tt, embeds, time_ids.as_ref(), pipe.defaults.guidance)?.to_dtype(DType::F32)?;
    let ab: Vec<f64> = t.iter().map(|t| schedule.alpha_bar(*t)).collect();
    Ok(to_epsilon(pipe.scheduler.prediction_type, x, &out, &ab)?)
}

/// Print a line above the progress bar (or to stderr when it is hidden).
fn note(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}

fn rng_state(rng: &ChaCha8Rng, seed: u64) -> NoiseRngState {
    NoiseRngState { seed, word_pos: rng.get_word_pos() }
}

fn rng_from(state: NoiseRngState) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(state.seed);
    r.set_word_pos(state.word_pos);
    r
}

/// Where a training loop starts: step, the noise stream, its second RNG
/// stream and the data cursor.
struct Start {
    step: u64,
    noise: NoiseRng,
    rng: ChaCha8Rng,
    cursor: u64,
}

/// Fresh from the seeds, or from the newest complete checkpoint (weights
/// and AdamW moments restored into `opt`). `second` is the second
/// stream's seed and what it draws (`timestep`, `transition`); its state is
/// saved under that word plus "s".
fn start(latest: Option<&crate::train::Checkpoint>, opt: &mut AdamW, noise_seed: u64, second: (u64, &str)) -> Result<Start> {
    let Some(ck) = latest else {
        return Ok(Start { step: 0, noise: NoiseRng::new(noise_seed), rng: ChaCha8Rng::seed_from_u64(second.0), cursor: 0 });
    };
    ck.restore_weights(opt.params())?;
    ck.restore_optimizer(opt)?;
    let st = ck.state();
    let bad = |what: &str| Error::Checkpoint { path: ck.dir().join(crate::train::STATE_FILE), msg: format!("no {what}") };
    let cursor = st.data_cursor.get("next").and_then(|v| v.as_u64()).ok_or_else(|| bad("data cursor"))?;
    let n = NoiseRng::from_state(*st.rng.get("noise").ok_or_else(|| bad("noise RNG state"))?);
    let key = format!("{}s", second.1);
    let rng = rng_from(*st.rng.get(key.as_str()).ok_or_else(|| bad(&format!("{} RNG state", second.1)))?);
    Ok(Start { step: ck.step(), noise: n, rng, cursor })
}

/// The run directory for `cfg` and its newest complete checkpoint; a
/// fresh run (`resume` false) into a directory with checkpoints is refused.
fn open_run(cfg: &RunConfig, run_dir: &Path, resume: bool) -> Result<(RunDir, Option<crate::train::Checkpoint>)> {
    let run = RunDir::open(run_dir, &cfg.without_device().to_toml()?)?.keep_last(cfg.checkpoint.keep_last);
    let latest = run.latest()?;
    if !resume && latest.is_some() {
        let msg = "the run directory already has checkpoints; resume it with --resume or choose a new --out";
        return Err(Error::Checkpoint { path: run.checkpoints_dir(), msg: msg.into() });
    }
    Ok((run, latest))
}

/// The config's model, with gradient checkpointing as asked, and the
/// image size (width, height) it samples at.
fn load_pipeline(cfg: &RunConfig) -> Result<(Pipeline, (usize, usize))> {
    let opts = LoadOptions { dtype: cfg.dtype(), device: cfg.device()?, variant: cfg.model.variant.clone() };
    let mut pipe = Pipeline::load(&cfg.model.path, &opts)?;
    pipe.unet.set_gradient_checkpointing(cfg.model.gradient_checkpointing);
    if let Some(g) = cfg.model.guidance {
        if !(g.is_finite() && g >= 0.0) {
            return Err(Error::invalid(format!("model.guidance = {g}: give a guidance scale of 0 or more")));
        }
        pipe.defaults.guidance = g;
    }
    let size = (pipe.defaults.width.unwrap_or(512), pipe.defaults.height.unwrap_or(512));
    Ok((pipe, size))
}

/// Save a checkpoint the way [`start`] reads it back: trained weights,
/// AdamW moments, the noise stream, the second stream (its seed, state and
/// word, saved under the word plus "s") and the data cursor; noted above
/// the bar. Returns the checkpoint's directory.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(run: &RunDir, pb: &ProgressBar, step: u64, opt: &AdamW, noise: &NoiseRng, second: (&ChaCha8Rng, u64, &str), cursor: u64, loss_scale: Option<LossScale>) -> Result<PathBuf> {
    let mut rng = BTreeMap::new();
    rng.insert("noise".to_string(), noise.state());
    rng.insert(format!("{}s", second.2), rng_state(second.0, second.1));
    let weights = vars_to_tensors(opt.params());
    let data_cursor = serde_json::json!({ "next": cursor });
    let ck = run.save(&CheckpointContents { step, weights: &weights, optimizer: opt, rng, data_cursor, loss_scale })?;
    note(pb, format!("checkpoint {}", ck.dir().display()));
    Ok(ck.dir().to_path_buf())
}

/// The dynamic loss scale of an f16 run (none for f32 and bf16), as the
/// checkpoint it resumes from left it.
fn loss_scaler(pipe: &Pipeline, latest: Option<&Checkpoint>) -> Option<LossScale> {
    (pipe.dtype == DType::F16).then(|| latest.and_then(|c| c.state().loss_scale).unwrap_or_default())
}

/// `loss` times the loss scale, for the backward pass.
fn scaled(loss: &Tensor, scaler: Option<&LossScale>) -> Result<Tensor> {
    Ok(match scaler {
        Some(s) => (loss * s.scale)?,
        None => loss.clone(),
    })
}

/// The end of a step whose mean loss was `loss`: check, unscale, clip and
/// apply the gradients. Returns the gradient norm before clipping, or None
/// when an f16 step overflowed and was skipped (the scale halved). Nothing
/// is applied when the loss or a gradient is not finite, so a NaN never
/// reaches the weights, the AdamW moments or a checkpoint: that ends the
/// run with an error (f32 and bf16, or f16 at the smallest scale).
#[allow(clippy::too_many_arguments)]
fn apply_gradients(mut grads: Grads, loss: f64, scaler: &mut Option<LossScale>, grad_clip: f64, lr: f64, opt: &mut AdamW, step: u64) -> Result<Option<f64>> {
    let fault = |what: String| Error::invalid(format!("step {}: {what}; nothing was applied and the last checkpoint is intact; lower optim.lr or check the data", step + 1));
    if !loss.is_finite() {
        return Err(fault(format!("the loss is {loss}")));
    }
    let mut norm = grads.global_norm()?;
    if let Some(s) = scaler.as_mut() {
        let scale = s.scale;
        match s.update(norm) {
            ScaledStep::Skip => return Ok(None),
            ScaledStep::Apply => {
                grads.scale_by(1.0 / scale)?;
                norm /= scale;
            }
            ScaledStep::Fault => {}
        }
    }
    if !norm.is_finite() {
        return Err(fault(format!("the gradient norm is {norm}")));
    }
    if grad_clip > 0.0 {
        grads.clip_global_norm(grad_clip)?;
    }
    opt.set_lr(lr);
    opt.step(&grads)?;
    Ok(Some(norm))
}

/// The training progress bar, noting a resume.
fn progress_bar(max_steps: u64, resumed_from: u64) -> ProgressBar {
    let pb = ProgressBar::new(max_steps).with_position(resumed_from);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]") {
        pb.set_style(style);
    }
    if resumed_from > 0 {
        note(&pb, format!("resumed from step {resumed_from}"));
    }
    pb
}

/// Train as `cfg` says, writing into `run_dir`. With `resume`, continue
/// from the newest complete checkpoint there (the directory's config.toml
/// must equal `cfg`); without it, the directory must hold no checkpoint.
pub fn run(cfg: &RunConfig, run_dir: &Path, resume: bool) -> Result<Summary> {
    if let DataConfig::Online { .. } = cfg.data {
        return online::run(cfg, run_dir, resume);
    }
    let started = Instant::now();
    // 0a. Cheap checks first: the data files, the objective, the run directory.
    let files = TaskFiles::open(&cfg.data)?;
    let objective = Objective::new(cfg.objective.kind, cfg.objective.beta);
    let (run, latest) = open_run(cfg, run_dir, resume)?;

    // 0b. The model, the trained parameters, and the image size the data must have.
    let (mut pipe, size) = load_pipeline(cfg)?;
    files.check_size(size.0 as u32, size.1 as u32)?;
    let trainable = Trainable::attach_pipeline(&mut pipe, &cfg.lora)?;
    let switch = trainable.switch().cloned();
    let train_text = trainable.trains_text_encoder();
    if objective.kind.uses_frozen_model() && switch.is_none() {
        let msg = format!("objective {} compares with the frozen model (the network with its LoRA off); full fine-tuning has none: use LoRA, pso-hinge or sft", objective.kind);
        return Err(Error::config(run.config_path(), msg));
    }
    let transfer_weight = cfg.objective.one_step_transfer;
    if transfer_weight != 0.0 && (switch.is_none() || !(transfer_weight > 0.0 && transfer_weight.is_finite())) {
        let msg = format!("objective.one-step-transfer = {transfer_weight}: it must be a positive number, and it compares with the frozen model, so it needs LoRA");
        return Err(Error::config(run.config_path(), msg));
    }
    let schedule = NoiseSchedule::from_config(&pipe.scheduler)?;
    // The model's own K-step chain, for the one-step transfer term.
    let chain = {
        let d = &pipe.defaults;
        pipe.sampler(d.sampler, d.steps, d.timesteps.as_deref())?
    };
    let distilled: Vec<f64> = match &cfg.objective.timesteps {
        Some(ts) => {
            let n = schedule.num_train_timesteps();
            if ts.is_empty() || ts.iter().any(|&t| t >= n) {
                let msg = format!("objective.timesteps = {ts:?}: give one or more timesteps below the model's {n} training timesteps (its own sampling timesteps are {:?})", chain.timesteps());
                return Err(Error::config(run.config_path(), msg));
            }
            ts.iter().map(|t| *t as f64).collect()
        }
        None => chain.timesteps().to_vec(),
    };

    // Pairs are reported by timestep when they are drawn from a few of them.
    let per_timestep = objective.kind.timestep_rule() == crate::objectives::TimestepRule::Distilled && distilled.len() > 1;

    // 0c. Encode the fixed data once.
    // The cached embeddings are the frozen model's (adapters off): with a
    // trained text encoder the policy re-encodes its prompts every step.
    let set = match &switch {
        Some(sw) => sw.run_disabled(|| TrainSet::prepare(&files, &pipe, cfg))?,
        None => TrainSet::prepare(&files, &pipe, cfg)?,
    };
    let val_prompts = if cfg.validation.prompts.is_empty() { set.validation_prompts.clone() } else { cfg.validation.prompts.clone() };

    let o = &cfg.optim;
    let adamw = AdamWConfig { lr: o.lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weight_decay: o.weight_decay };
    let mut opt = AdamW::new(trainable.vars(), adamw)?;
    let lr_schedule = o.lr_schedule();
    let (noise_seed, t_seed, ref_seed) = (data::splitmix(o.seed ^ 1), data::splitmix(o.seed ^ 2), data::splitmix(o.seed ^ 3));

    // 0d. Start fresh or resume from the newest complete checkpoint.
    let Start { mut step, mut noise, rng: mut t_rng, mut cursor } = start(latest.as_ref(), &mut opt, noise_seed, (t_seed, "timestep"))?;
    let resumed_from = step;
    let mut scaler = loss_scaler(&pipe, latest.as_ref());
    let mut metrics = artefacts::MetricsLog::open(&run_dir.join(METRICS_FILE), step)?;
    let pb = progress_bar(o.max_steps, resumed_from);
    let grid = |step: u64| -> Result<()> {
        let path = run_dir.join(SAMPLES_DIR).join(format!("{}.png", artefacts::step_name(step)));
        artefacts::sample_grid(&pipe, &val_prompts, &cfg.validation.seeds, cfg.validation.steps, &path)
    };
    if step == 0 {
        grid(0)?; // the model before training, to compare with
    }

    // References: sampled by the model at the last refresh boundary, or the dataset's.
    let refresh = cfg.data.refresh_every();
    let refs_at = |s: u64| -> Result<Option<Vec<Tensor>>> {
        if !objective.kind.uses_references() {
            return Ok(None);
        }
        match &set.pool {
            data::ReferencePool::Fixed(v) => Ok(Some(v.clone())),
            data::ReferencePool::Sampled(prompts) => Ok(Some(artefacts::sampled_references(&pipe, prompts, run_dir, s, ref_seed)?)),
        }
    };
    let mut refs = refs_at(if refresh > 0 { step - step % refresh } else { 0 })?;

    let mut final_loss = None;
    let mut last_checkpoint = latest.map(|c| c.dir().to_path_buf()).unwrap_or_default();
    let (bs, n_train) = (o.batch_size, schedule.num_train_timesteps());
    while step < o.max_steps {
        if refresh > 0 && step > 0 && step % refresh == 0 {
            refs = refs_at(step)?;
        }
        let t0 = Instant::now();
        let mut acc = GradAccumulator::new();
        let (mut loss_sum, mut acc_sum, mut margin_sum, mut transfer_sum) = (0.0, None::<f64>, None::<f64>, None::<f64>);
        let mut by_timestep = BTreeMap::new();
        for _ in 0..o.grad_accum {
            // 1. Batch.
            let batch = gather(&set, refs.as_deref(), cursor, bs)?;
            cursor += bs as u64;
            // 2. Noise and timesteps, the same for both images of a pair.
            let eps = noise.randn(batch.target.shape(), DType::F32, &pipe.device)?;
            let t = objective.draw_timesteps(&distilled, n_train, &mut t_rng, bs)?;
            let mut x = schedule.add_noise(&batch.target, &eps, &t)?;
            let (mut tt, mut embeds) = (t.clone(), batch.embeds.clone());
            // With text-encoder LoRA the policy's embeddings come from the graph.
            let mut policy_embeds = if train_text {
                let prompts: Vec<&str> = batch.prompts.iter().map(String::as_str).collect();
                Some(pipe.encode_prompts(&prompts)?)
            } else {
                None
            };
            let own_embeds = policy_embeds.clone();
            if let Some(r) = &batch.reference {
                x = Tensor::cat(&[&x, &schedule.add_noise(r, &eps, &t)?], 0)?;
                tt.extend_from_slice(&t);
                embeds = PromptEmbeds::cat(&embeds, &batch.embeds)?;
                policy_embeds = policy_embeds.map(|e| PromptEmbeds::cat(&e, &e)).transpose()?;
            }
            // 3. Policy forward (adapters on).
            let policy = eps_forward(&pipe, &x, &tt, policy_embeds.as_ref().unwrap_or(&embeds), &schedule, size)?;
            // 4. Frozen forward: the same network with the adapters off.
            let frozen = match (&switch, objective.kind.uses_frozen_model()) {
                (Some(sw), true) => Some(sw.run_disabled(|| eps_forward(&pipe, &x, &tt, &embeds, &schedule, size))?.detach()),
                _ => None,
            };
            // 5. Loss.
            let half = |t: &Tensor, i: usize| t.narrow(0, i * bs, bs);
            let paired = batch.reference.is_some();
            let target = half(&policy, 0)?;
            let reference = if paired { Some(half(&policy, 1)?) } else { None };
            let (target_frozen, reference_frozen) = match &frozen {
                Some(f) => (Some(half(f, 0)?), Some(half(f, 1)?)),
                None => (None, None),
            };
            let out = objective.loss(&Predictions {
                eps: &eps,
                target: &target,
                reference: reference.as_ref(),
                target_frozen: target_frozen.as_ref(),
                reference_frozen: reference_frozen.as_ref(),
            })?;
            // 6. Backward.
            acc.add_store(&scaled(&out.loss, scaler.as_ref())?.backward()?, opt.params())?;
            loss_sum += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            acc_sum = out.acc.map(|a| acc_sum.unwrap_or(0.0) + a);
            margin_sum = out.margin.map(|m| margin_sum.unwrap_or(0.0) + m);
            if let (Some((pl, pz)), true) = (&out.per_pair, per_timestep) {
                let v = |x: &Tensor| x.to_dtype(DType::F64)?.to_vec1::<f64>();
                artefacts::TimestepStats::add(&mut by_timestep, &t, &v(pl)?, &v(pz)?);
            }
            // 6b. The one-step transfer term, its own backward.
            if let (Some(sw), true) = (&switch, transfer_weight > 0.0) {
                let policy = own_embeds.as_ref().unwrap_or(&batch.embeds);
                let term = transfer::one_step_transfer(&pipe, sw, chain.as_ref(), policy, &batch.embeds, batch.target.dims(), size, &mut noise)?;
                // Part of this micro-batch's loss, not another micro-batch.
                acc.add_term_store(&scaled(&(&term * transfer_weight)?, scaler.as_ref())?.backward()?, opt.params())?;
                transfer_sum = Some(transfer_sum.unwrap_or(0.0) + term.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            }
        }
        // 7. Check, clip and step.
        let n = o.grad_accum as f64;
        let lr = lr_schedule.lr(o.lr, step);
        let grad_norm = apply_gradients(acc.finish()?, loss_sum / n, &mut scaler, o.grad_clip, lr, &mut opt, step)?;
        step += 1;

        // 8. Log.
        let m = StepMetrics {
            step,
            loss: loss_sum / n,
            acc: acc_sum.map(|a| a / n),
            margin: margin_sum.map(|a| a / n),
            lr,
            grad_norm,
            loss_scale: scaler.map(|s| s.scale),
            skipped: scaler.map(|s| s.skipped),
            seconds: t0.elapsed().as_secs_f64(),
            transfer: transfer_sum.map(|v| v / n),
            by_timestep: (!by_timestep.is_empty()).then_some(by_timestep),
        };
        metrics.write(&m)?;
        final_loss = Some(m.loss);
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        pb.set_message(format!("loss {:.4} acc {} margin {}", m.loss, fmt(m.acc), fmt(m.margin)));
        pb.set_position(step);

        // 9. Validation grid and checkpoint.
        let last = step == o.max_steps;
        if last || (cfg.validation.every > 0 && step % cfg.validation.every == 0) {
            grid(step)?;
        }
        if last || step % cfg.checkpoint.every == 0 {
            last_checkpoint = save_checkpoint(&run, &pb, step, &opt, &noise, (&t_rng, t_seed, "timestep"), cursor, scaler)?;
        }
    }
    pb.finish();
    Ok(Summary { steps: step, resumed_from, final_loss, last_checkpoint, seconds: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use candle_core::{Device, Var};

    fn setup() -> (AdamW, Var) {
        let v = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        (AdamW::new(vec![("w".into(), v.clone())], AdamWConfig::default()).unwrap(), v)
    }

    fn grads(vals: [f32; 2]) -> Grads {
        let mut g = Grads::default();
        g.insert("w", Tensor::new(&vals, &Device::Cpu).unwrap());
        g
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn an_overflowed_f16_step_is_skipped_and_a_finite_one_unscaled() {
        let (mut opt, v) = setup();
        let mut scaler = Some(LossScale::default());
        let norm = apply_gradients(grads([f32::INFINITY, 1.0]), 0.5, &mut scaler, 1.0, 1e-3, &mut opt, 0).unwrap();
        assert_eq!(norm, None);
        assert_eq!(values(&v), [1.0, 2.0], "a skipped step changed the weights");
        let s = scaler.unwrap();
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        // Scaled gradients 3 * 32768 and 4 * 32768: the reported norm is the
        // unscaled 5.
        let norm = apply_gradients(grads([3.0 * 32768.0, 4.0 * 32768.0]), 0.5, &mut scaler, 0.0, 1e-3, &mut opt, 1).unwrap();
        assert!((norm.unwrap() - 5.0).abs() < 1e-9, "{norm:?}");
        assert_ne!(values(&v), [1.0, 2.0]);
    }

    #[test]
    fn a_non_finite_gradient_is_an_error_and_applies_nothing() {
        for bad in [f32::NAN, f32::INFINITY] {
            let (mut opt, v) = setup();
            let err = apply_gradients(grads([bad, 1.0]), 0.5, &mut None, 1.0, 1e-3, &mut opt, 6).unwrap_err().to_string();
            assert!(err.contains("step 7") && err.contains("gradient norm") && err.contains("nothing was applied"), "{err}");
            assert_eq!(values(&v), [1.0, 2.0]);
            // An f16 run at the smallest scale: the same.
            let mut scaler = Some(LossScale { scale: 1.0, good_steps: 0, skipped: 4 });
            assert!(apply_gradients(grads([bad, 1.0]), 0.5, &mut scaler, 1.0, 1e-3, &mut opt, 6).is_err());
            assert_eq!(values(&v), [1.0, 2.0]);
        }
    }
}
