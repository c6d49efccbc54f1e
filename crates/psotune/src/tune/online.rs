//! Online PSO (pso.md §3b): the references are sampled during training by
//! the current model and ranked by a reward.
//!
//! Each optimizer step does, per micro-batch of B prompts:
//! 1. batch: B prompts from the data cursor (a seeded shuffle per epoch);
//! 2. sample: two chains per prompt from the current model (adapters on),
//!    independent initial noise, every step's (x_t, t, x_{t-1}) kept;
//! 3. reward: decode and score the 2B final images; per prompt the better
//!    sample is the winner, the other the loser (ties dropped);
//! 4. per trained transition n (K of the chain's stochastic ones, drawn at
//!    random): the log-prob of the stored x_{t-1} under the policy (adapters
//!    on) and the frozen model (adapters off, no copy), the clipped logistic
//!    loss, and backward (gradients accumulate over micro-batches and
//!    transitions);
//!
//! then 5. clip and AdamW step, 6. log, 7. validation reward on held-out
//! prompts at fixed seeds (and a sample grid), 8. checkpoint (weights,
//! moments, both RNG streams, the data cursor: a killed run resumes
//! bit-exactly).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::{DataConfig, RunConfig};
use super::data::splitmix;
use super::{artefacts, note, Summary, Trainable, SAMPLES_DIR};
use crate::diffusion::{gaussian_log_prob, NoiseRng, Sampler};
use crate::error::{Error, Result};
use crate::objectives::{d3po_online, pso_online, ObjectiveKind};
use crate::pipeline::{Family, Pipeline, PromptEmbeds, SampleRequest, SamplerKind};
use crate::reward::Reward;
use crate::train::{AdamW, AdamWConfig, GradAccumulator};

pub const VALIDATION_FILE: &str = "validation.jsonl";

/// `[online]`: the sampled chains and the loss's clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OnlineConfig {
    /// Sampler of the training chains: turbo (Euler-ancestral), dmd2 or lcm
    /// (default: the model's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// Steps of each training chain (default: the model's own; the authors
    /// sample 8 for DMD2 and validate at its 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_steps: Option<usize>,
    /// Explicit chain timesteps, noisiest first (overrides sample-steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<usize>>,
    /// Stochastic transitions trained per chain, drawn at random for each
    /// micro-batch (default: all of them, e.g. 7 of an 8-step chain; the
    /// last step is deterministic and never trained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_transitions: Option<usize>,
    /// e: each policy/frozen likelihood ratio is clamped to [1 - e, 1 + e]
    /// (the authors: 0.1).
    #[serde(default = "default_clip")]
    pub clip: f64,
}

fn default_clip() -> f64 {
    0.1
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self { sampler: None, sample_steps: None, timesteps: None, train_transitions: None, clip: default_clip() }
    }
}

/// Config checks of the online task (called by `RunConfig::resolve`): the
/// `[online]` section filled in, `[reward]` present, the objective PSO;
/// `[online]` and `[reward]` refused on the other tasks.
pub(crate) fn resolve_config(cfg: &mut RunConfig) -> std::result::Result<(), String> {
    if !matches!(cfg.data, DataConfig::Online { .. }) {
        if cfg.online.is_some() || cfg.reward.is_some() {
            return Err("[online] and [reward] belong to data.kind = \"online\"".into());
        }
        if cfg.objective.kind == ObjectiveKind::D3po {
            return Err("objective.kind d3po trains on sampled chains: it needs data.kind = \"online\"".into());
        }
        return Ok(());
    }
    if !matches!(cfg.objective.kind, ObjectiveKind::Pso | ObjectiveKind::D3po) {
        return Err(format!("data.kind = \"online\" trains the PSO loss of pso.md §3b (pso) or its D3PO baseline (d3po); objective.kind {} does not apply", cfg.objective.kind));
    }
    let o = cfg.online.get_or_insert_with(OnlineConfig::default);
    if !(o.clip > 0.0 && o.clip < 1.0) {
        return Err(format!("online.clip {} must be in (0, 1)", o.clip));
    }
    if let Some(s) = &o.sampler {
        let kind: SamplerKind = s.parse().map_err(|e: Error| format!("online.sampler: {e}"))?;
        if kind == SamplerKind::Ddim {
            return Err("online.sampler ddim is deterministic: online PSO needs a stochastic sampler (turbo, dmd2, lcm)".into());
        }
    }
    if o.sample_steps == Some(0) || o.train_transitions == Some(0) {
        return Err("online.sample-steps and online.train-transitions must be at least 1".into());
    }
    let reward = cfg.reward.as_mut().ok_or("data.kind = \"online\" needs a [reward] section (e.g. kind = \"colourfulness\")")?;
    reward.resolve()
}

/// Read a prompts file: one prompt per line, blank and `#` lines skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let prompts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if prompts.is_empty() {
        return Err(Error::data(path, None, "no prompts (one per line; blank lines and lines starting with # are skipped)"));
    }
    Ok(prompts)
}

/// The prompt at global index `n`: every epoch visits every prompt once, in
/// an order that depends only on the seed and the epoch (so the data
/// cursor is all a resume needs).
fn prompt_at(prompts: &[String], seed: u64, n: u64) -> &str {
    let len = prompts.len() as u64;
    let (epoch, pos) = (n / len, (n % len) as usize);
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ splitmix(epoch)));
    &prompts[order[pos]]
}

/// The sampled chains of one micro-batch, all detached: the samples are
/// data; log-probs are recomputed with gradients in step 4.
pub struct Chains {
    /// The input x of every step, [N, C, h, w] f32 (sampler space).
    pub xs: Vec<Tensor>,
    /// The output x_prev of every step.
    pub prevs: Vec<Tensor>,
}

impl Chains {
    /// The final latents (the last step's output).
    pub fn latents(&self) -> Result<&Tensor> {
        self.prevs.last().ok_or_else(|| Error::invalid("an empty chain"))
    }
}

/// The network's raw output (f32) at the sampler's input scaling of step i.
fn predict(pipe: &Pipeline, sampler: &dyn Sampler, i: usize, x: &Tensor, embeds: &PromptEmbeds, size: (usize, usize)) -> Result<Tensor> {
    let n = x.dim(0)?;
    let xin = sampler.scale_model_input(x, i)?;
    let t = Tensor::full(sampler.timesteps()[i] as f32, n, &pipe.device)?;
    let time_ids = match pipe.family() {
        Family::Sdxl => Some(pipe.default_time_ids(n, size.1, size.0)?),
        Family::Sd => None,
    };
    Ok(pipe.predict(&xin.to_dtype(pipe.dtype)?, &t, embeds, time_ids.as_ref(), pipe.defaults.guidance)?.to_dtype(DType::F32)?)
}

/// Sample one chain per row of `embeds` with the model as it is now,
/// drawing the initial latents and every step's noise from `noise`.
pub fn sample_chains(pipe: &Pipeline, sampler: &dyn Sampler, embeds: &PromptEmbeds, noise: &mut NoiseRng, size: (usize, usize)) -> Result<Chains> {
    let n = embeds.batch()?;
    let f = pipe.vae_factor();
    let shape = (n, pipe.unet.config().in_channels, size.1 / f, size.0 / f);
    let mut x = (noise.randn(shape, DType::F32, &pipe.device)? * sampler.init_noise_sigma())?;
    let (mut xs, mut prevs) = (Vec::new(), Vec::new());
    for i in 0..sampler.num_steps() {
        let out = predict(pipe, sampler, i, &x, embeds, size)?.detach();
        let z = if sampler.needs_noise(i) { Some(noise.randn(x.shape(), DType::F32, &pipe.device)?) } else { None };
        let prev = sampler.step(i, &x, &out, z.as_ref())?.prev.detach();
        xs.push(x);
        prevs.push(prev.clone());
        x = prev;
    }
    Ok(Chains { xs, prevs })
}

/// log p(prev | x) of step i (pso.md §3b), per sample and averaged over
/// dimensions, under the network as it is now (differentiable).
pub fn transition_log_prob(pipe: &Pipeline, sampler: &dyn Sampler, i: usize, x: &Tensor, prev: &Tensor, embeds: &PromptEmbeds, size: (usize, usize)) -> Result<Tensor> {
    let out = predict(pipe, sampler, i, x, embeds, size)?;
    let tr = sampler.transition(i, x, &out)?;
    Ok(gaussian_log_prob(prev, &tr.mean, tr.std)?)
}

fn select_embeds(e: &PromptEmbeds, idx: &Tensor) -> Result<PromptEmbeds> {
    let pooled = match &e.pooled {
        Some(p) => Some(p.index_select(idx, 0)?),
        None => None,
    };
    Ok(PromptEmbeds { hidden: e.hidden.index_select(idx, 0)?, pooled })
}

/// Decoded images in [-1, 1] of final latents.
fn decode(pipe: &Pipeline, latents: &Tensor) -> Result<Tensor> {
    Ok(pipe.vae.image_from_latents(&latents.to_dtype(pipe.dtype)?)?.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?.detach())
}

/// Winner and loser of each prompt's two samples (scores `[a_0..a_B, b_0..b_B]`):
/// `(winner row, loser row)` for every prompt whose scores differ.
pub fn rank_pairs(scores: &[f32]) -> Vec<(usize, usize)> {
    let b = scores.len() / 2;
    (0..b)
        .filter_map(|j| {
            let (a, c) = (scores[j], scores[j + b]);
            if a > c {
                Some((j, j + b))
            } else if c > a {
                Some((j + b, j))
            } else {
                None
            }
        })
        .collect()
}

/// One line of `metrics.jsonl` for the online task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineMetrics {
    /// Optimizer steps completed.
    pub step: u64,
    /// Passes over the training prompts completed (fractional).
    pub epoch: f64,
    /// Mean loss over the step's trained transitions (None: every pair tied).
    pub loss: Option<f64>,
    /// Fraction of trained (pair, transition)s whose winner ratio beats the loser's.
    pub acc: Option<f64>,
    /// Mean logit beta (log r_w - log r_l).
    pub margin: Option<f64>,
    /// Mean reward of all images sampled this step.
    pub reward: f64,
    /// Mean reward difference winner - loser over the kept pairs.
    pub win_margin: Option<f64>,
    /// Pairs trained (prompts whose two samples did not tie).
    pub pairs: usize,
    /// Pairs dropped as ties.
    pub ties: usize,
    pub lr: f64,
    /// Global gradient norm before clipping (None when nothing was trained,
    /// or an f16 step overflowed and was skipped).
    pub grad_norm: Option<f64>,
    /// f16 runs: the dynamic loss scale after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16 runs: steps skipped for overflow so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    pub seconds: f64,
    /// Validation reward, on the steps where it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_reward: Option<f64>,
}

/// One line of `validation.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    pub step: u64,
    /// Mean reward over prompts x seeds.
    pub reward: f64,
    /// Row-major: prompt i, seed j at i * seeds + j.
    pub scores: Vec<f32>,
}

/// Everything step 7 needs.
struct Validation<'a> {
    prompts: &'a [String],
    seeds: &'a [u64],
    steps: Option<usize>,
}

impl Validation<'_> {
    /// Sample every prompt at every seed with the model's own sampler (or
    /// `validation.steps`), score them, and save the grid (rows prompts,
    /// columns seeds).
    fn run(&self, pipe: &Pipeline, reward: &mut dyn Reward, step: u64, run_dir: &Path) -> Result<ValidationRecord> {
        let mut per_seed = Vec::with_capacity(self.seeds.len());
        for &seed in self.seeds {
            let out = pipe.sample(&SampleRequest { prompts: self.prompts.to_vec(), steps: self.steps, seed, ..Default::default() })?;
            per_seed.push(out.images.detach());
        }
        // Row-major prompt x seed, for the grid and the scores alike.
        let mut images = Vec::new();
        let mut prompts = Vec::new();
        for (i, p) in self.prompts.iter().enumerate() {
            for imgs in &per_seed {
                images.push(imgs.get(i)?);
                prompts.push(p.clone());
            }
        }
        let path = run_dir.join(SAMPLES_DIR).join(format!("{}.png", artefacts::step_name(step)));
        crate::pipeline::image::save_png(&artefacts::tile(&images, self.seeds.len())?, &path)?;
        let batch = Tensor::stack(&images, 0)?.affine(2.0, -1.0)?;
        let scores = reward.score(&batch, &prompts)?;
        let reward = scores.iter().map(|s| *s as f64).sum::<f64>() / scores.len().max(1) as f64;
        Ok(ValidationRecord { step, reward, scores })
    }
}

/// Train the online task as `cfg` says (see the module docs); called by
/// [`super::run`] for `data.kind = "online"`.
pub fn run(cfg: &RunConfig, run_dir: &Path, resume: bool) -> Result<Summary> {
    let started = Instant::now();
    // 0a. Cheap checks first: prompts, the reward's prompt coverage, the run directory.
    let DataConfig::Online { prompts: prompts_path, validation_prompts } = &cfg.data else {
        return Err(Error::invalid("tune::online::run needs data.kind = \"online\""));
    };
    let (Some(online), Some(reward_cfg)) = (&cfg.online, &cfg.reward) else {
        return Err(Error::invalid("an online run config must be resolved (RunConfig::load) before it runs"));
    };
    let prompts = read_prompts(prompts_path)?;
    let val_prompts = match validation_prompts {
        Some(p) => read_prompts(p)?,
        None if !cfg.validation.prompts.is_empty() => cfg.validation.prompts.clone(),
        None => prompts.iter().take(4).cloned().collect(),
    };
    reward_cfg.check_prompts(prompts.iter().chain(&val_prompts))?;
    let (run, latest) = super::open_run(cfg, run_dir, resume)?;

    // 0b. The model, its adapters, the training sampler.
    let (mut pipe, size) = super::load_pipeline(cfg)?;
    if pipe.uses_cfg(pipe.defaults.guidance) {
        let msg = format!("online PSO scores transitions of the unguided network; this model samples with guidance {}", pipe.defaults.guidance);
        return Err(Error::config(run.config_path(), msg));
    }
    let trainable = Trainable::attach(&mut pipe.unet, &cfg.lora)?;
    let d3po = cfg.objective.kind == ObjectiveKind::D3po;
    let switch = trainable.switch().cloned();
    if switch.is_none() && !d3po {
        let msg = "online PSO compares with the frozen model (the network with its LoRA off); full fine-tuning has none: use LoRA (or objective d3po)";
        return Err(Error::config(run.config_path(), msg));
    }
    let sampler = {
        let d = &pipe.defaults;
        let kind = match &online.sampler {
            Some(s) => s.parse::<SamplerKind>()?,
            None => d.sampler,
        };
        let steps = online.sample_steps.unwrap_or(d.steps);
        let own = (kind == d.sampler && steps == d.steps).then(|| d.timesteps.clone()).flatten();
        pipe.sampler(kind, steps, online.timesteps.as_deref().or(own.as_deref()))?
    };
    let stochastic: Vec<usize> = (0..sampler.num_steps()).filter(|i| sampler.needs_noise(*i)).collect();
    let k = online.train_transitions.unwrap_or(stochastic.len());
    if stochastic.is_empty() || k > stochastic.len() {
        let msg = format!(
            "online.train-transitions {k}: the {}-step chain ({:?}) has {} stochastic transitions (the last step is deterministic)",
            sampler.num_steps(),
            sampler.timesteps(),
            stochastic.len()
        );
        return Err(Error::config(run.config_path(), msg));
    }

    // 0c. The reward (an external scorer starts here, once).
    let mut reward = reward_cfg.build(run_dir, &pipe.device)?;

    let o = &cfg.optim;
    let beta = cfg.objective.beta.unwrap_or(cfg.objective.kind.default_beta());
    let adamw = AdamWConfig { lr: o.lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weight_decay: o.weight_decay };
    let mut opt = AdamW::new(trainable.vars(), adamw)?;
    let lr_schedule = o.lr_schedule();
    let (noise_seed, pick_seed, order_seed) = (splitmix(o.seed ^ 1), splitmix(o.seed ^ 4), splitmix(o.seed ^ 5));

    // 0d. Start fresh or resume from the newest complete checkpoint.
    let super::Start { mut step, mut noise, rng: mut pick_rng, mut cursor } =
        super::start(latest.as_ref(), &mut opt, noise_seed, (pick_seed, "transition"))?;
    let resumed_from = step;
    let mut scaler = super::loss_scaler(&pipe, latest.as_ref());
    let mut metrics = super::artefacts::MetricsLog::open(&run_dir.join(super::METRICS_FILE), step)?;
    let mut val_log = super::artefacts::MetricsLog::open(&run_dir.join(VALIDATION_FILE), step)?;

    let pb = super::progress_bar(o.max_steps, resumed_from);
    let validation = Validation { prompts: &val_prompts, seeds: &cfg.validation.seeds, steps: cfg.validation.steps };
    if step == 0 {
        // The model before training, to compare with.
        let v = validation.run(&pipe, reward.as_mut(), 0, run_dir)?;
        note(&pb, format!("validation reward {:.5} (base model)", v.reward));
        val_log.write(&v)?;
    }

    let mut final_loss = None;
    let mut last_checkpoint = latest.map(|c| c.dir().to_path_buf()).unwrap_or_default();
    let bs = o.batch_size;
    while step < o.max_steps {
        let t0 = Instant::now();
        let mut acc = GradAccumulator::new();
        let (mut loss_sum, mut acc_sum, mut margin_sum, mut trained) = (0.0, 0.0, 0.0, 0usize);
        let (mut reward_sum, mut n_scored, mut win_sum, mut pairs, mut ties) = (0.0, 0usize, 0.0, 0usize, 0usize);
        for _ in 0..o.grad_accum {
            // 1. Batch: B prompts, each twice (rows j and j + B).
            let batch: Vec<String> = (0..bs as u64).map(|i| prompt_at(&prompts, order_seed, cursor + i).to_string()).collect();
            cursor += bs as u64;
            let both: Vec<String> = batch.iter().chain(&batch).cloned().collect();
            let refs: Vec<&str> = both.iter().map(String::as_str).collect();
            let embeds = pipe.encode_prompts(&refs)?;

            // 2. Sample with the current model, adapters on.
            let chains = sample_chains(&pipe, sampler.as_ref(), &embeds, &mut noise, size)?;

            // 3. Reward: winner and loser per prompt.
            let images = decode(&pipe, chains.latents()?)?;
            let scores = reward.score(&images, &both)?;
            reward_sum += scores.iter().map(|s| *s as f64).sum::<f64>();
            n_scored += scores.len();
            let ranked = rank_pairs(&scores);
            ties += bs - ranked.len();
            pairs += ranked.len();
            win_sum += ranked.iter().map(|(w, l)| (scores[*w] - scores[*l]) as f64).sum::<f64>();
            // The transitions to train, drawn even when every pair tied, so
            // the stream's position does not depend on the reward's values.
            let mut chosen = stochastic.clone();
            chosen.shuffle(&mut pick_rng);
            chosen.truncate(k);
            chosen.sort_unstable();
            if ranked.is_empty() {
                continue;
            }
            let p = ranked.len();
            let rows: Vec<u32> = ranked.iter().map(|(w, _)| *w as u32).chain(ranked.iter().map(|(_, l)| *l as u32)).collect();
            let idx = Tensor::new(rows.as_slice(), &pipe.device)?;
            let pair_embeds = select_embeds(&embeds, &idx)?;

            // 4. Per trained transition: policy and reference log-probs
            //    (PSO: the frozen model; D3PO: the sampling policy), loss, backward.
            for &i in &chosen {
                let x = chains.xs[i].index_select(&idx, 0)?;
                let prev = chains.prevs[i].index_select(&idx, 0)?;
                let lp = transition_log_prob(&pipe, sampler.as_ref(), i, &x, &prev, &pair_embeds, size)?;
                let (w, l) = (lp.narrow(0, 0, p)?, lp.narrow(0, p, p)?);
                let out = match &switch {
                    Some(sw) if !d3po => {
                        let lp_pre = sw.run_disabled(|| transition_log_prob(&pipe, sampler.as_ref(), i, &x, &prev, &pair_embeds, size))?.detach();
                        pso_online(&w, &lp_pre.narrow(0, 0, p)?, &l, &lp_pre.narrow(0, p, p)?, beta, online.clip)?
                    }
                    _ => d3po_online(&w, &l, beta, online.clip)?,
                };
                acc.add_store(&super::scaled(&out.loss, scaler.as_ref())?.backward()?, opt.params())?;
                loss_sum += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                acc_sum += out.acc.unwrap_or(0.0);
                margin_sum += out.margin.unwrap_or(0.0);
                trained += 1;
            }
        }

        // 5. Check, clip and step (skipped when every pair tied: nothing
        // to learn from).
        let lr = lr_schedule.lr(o.lr, step);
        let grad_norm = if trained > 0 { super::apply_gradients(acc.finish()?, loss_sum / trained as f64, &mut scaler, o.grad_clip, lr, &mut opt, step)? } else { None };
        step += 1;

        // 6. Log.
        let per = |s: f64| (trained > 0).then(|| s / trained as f64);
        let mut m = OnlineMetrics {
            step,
            epoch: cursor as f64 / prompts.len() as f64,
            loss: per(loss_sum),
            acc: per(acc_sum),
            margin: per(margin_sum),
            reward: reward_sum / n_scored.max(1) as f64,
            win_margin: (pairs > 0).then(|| win_sum / pairs as f64),
            pairs,
            ties,
            lr,
            grad_norm,
            loss_scale: scaler.map(|s| s.scale),
            skipped: scaler.map(|s| s.skipped),
            seconds: t0.elapsed().as_secs_f64(),
            val_reward: None,
        };
        final_loss = m.loss.or(final_loss);

        // 7. Validation reward and grid.
        let last = step == o.max_steps;
        if last || (cfg.validation.every > 0 && step % cfg.validation.every == 0) {
            let v = validation.run(&pipe, reward.as_mut(), step, run_dir)?;
            m.val_reward = Some(v.reward);
            val_log.write(&v)?;
        }
        metrics.write(&m)?;
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        pb.set_message(format!("loss {} reward {:.3} val {}", fmt(m.loss), m.reward, fmt(m.val_reward)));
        pb.set_position(step);

        // 8. Checkpoint.
        if last || step % cfg.checkpoint.every == 0 {
            last_checkpoint = super::save_checkpoint(&run, &pb, step, &opt, &noise, (&pick_rng, pick_seed, "transition"), cursor, scaler)?;
        }
    }
    pb.finish();
    Ok(Summary { steps: step, resumed_from, final_loss, last_checkpoint, seconds: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::LoadOptions;
    use crate::diffusion::{build_sampler, SamplerKind as Kind, SchedulerConfig, Timesteps};
    use candle_core::Device;

    fn parse(text: &str, sets: &[&str]) -> Result<RunConfig> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml(text, Path::new("online.toml"), &sets)
    }

    const ONLINE: &str = "[model]\npath = \"/m\"\n[data]\nkind = \"online\"\nprompts = \"p.txt\"\n[reward]\nkind = \"colourfulness\"\n";

    #[test]
    fn online_config_defaults_and_errors() {
        let c = parse(ONLINE, &[]).unwrap();
        assert_eq!(c.online, Some(OnlineConfig::default()));
        assert_eq!(c.objective.beta, Some(50.0));
        let DataConfig::Online { prompts, validation_prompts: None } = &c.data else { panic!() };
        assert!(prompts.is_absolute());
        // The resolved text reads back to the same config.
        let text = c.to_toml().unwrap();
        assert!(text.contains("[online]") && text.contains("[reward]"), "{text}");
        assert_eq!(parse(&text, &[]).unwrap(), c);
        let c = parse(ONLINE, &["online.sampler=dmd2", "online.sample-steps=8", "online.train-transitions=7"]).unwrap();
        assert_eq!(c.online.as_ref().unwrap().train_transitions, Some(7));
        for (sets, want) in [
            (vec!["online.clip=1.5"], "online.clip"),
            (vec!["online.sampler=ddim"], "deterministic"),
            (vec!["online.sampler=euler"], "unknown sampler"),
            (vec!["online.train-transitions=0"], "at least 1"),
            (vec!["objective.kind=sft"], "objective.kind sft"),
            (vec!["objective.kind=pso-hinge"], "d3po"),
            (vec!["online.steps=4"], "steps"),
            (vec!["reward.kind=command"], "command"),
            (vec!["reward.kind=command", "reward.command=[]"], "reward.command"),
        ] {
            let e = parse(ONLINE, &sets).unwrap_err().to_string();
            assert!(e.starts_with("online.toml: ") && e.contains(want), "{sets:?}: {e}");
        }
        let e = parse(&ONLINE.replace("[reward]\nkind = \"colourfulness\"\n", ""), &[]).unwrap_err().to_string();
        assert!(e.contains("[reward]"), "{e}");
        let style = "[model]\npath = \"/m\"\n[data]\nkind = \"style\"\nimages = \"/i\"\n[reward]\nkind = \"colourfulness\"\n";
        assert!(parse(style, &[]).unwrap_err().to_string().contains("belong to data.kind"));
        let style = "[model]\npath = \"/m\"\n[objective]\nkind = \"d3po\"\n[data]\nkind = \"style\"\nimages = \"/i\"\n";
        assert!(parse(style, &[]).unwrap_err().to_string().contains("d3po trains on sampled chains"));
        let c = parse(ONLINE, &["objective.kind=d3po"]).unwrap();
        assert_eq!((c.objective.kind, c.objective.beta), (ObjectiveKind::D3po, Some(50.0)));
    }

    #[test]
    fn pairs_rank_by_score_and_drop_ties() {
        // prompts 0..3; row j vs row j + 3
        assert_eq!(rank_pairs(&[1.0, 2.0, 5.0, 0.5, 2.0, 7.0]), vec![(0, 3), (5, 2)], "prompt 1 tied");
        assert_eq!(rank_pairs(&[1.0, 3.0, 5.0, 0.5, 2.0, 7.0]), vec![(0, 3), (1, 4), (5, 2)]);
        assert_eq!(rank_pairs(&[1.0, 3.0, 1.0, 2.0]), vec![(1, 3)]);
        assert_eq!(rank_pairs(&[1.0, 2.0, 0.0, 3.0]), vec![(0, 2), (3, 1)]);
        assert!(rank_pairs(&[]).is_empty());
    }

    #[test]
    fn prompt_order_is_a_seeded_shuffle_per_epoch() {
        let p: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let epoch = |e: u64| (0..5).map(|i| prompt_at(&p, 3, e * 5 + i).to_string()).collect::<Vec<_>>();
        let (a, b) = (epoch(0), epoch(1));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, p);
        assert_ne!(a, b);
        assert_eq!(epoch(1), b);
    }

    #[test]
    fn prompt_files_skip_blanks_and_comments() {
        let d = crate::scratch::ScratchDir::new("psotune-prompts").unwrap();
        let f = d.join("prompts.txt");
        std::fs::write(&f, "# train\nan emoji of a cat\n\n  an emoji of a dog  \n").unwrap();
        assert_eq!(read_prompts(&f).unwrap(), vec!["an emoji of a cat", "an emoji of a dog"]);
        std::fs::write(&f, "# nothing\n\n").unwrap();
        assert!(read_prompts(&f).unwrap_err().to_string().contains("no prompts"));
    }

    /// log p(prev | x) of a DMD2 (re-noise) and a Turbo (Euler-ancestral)
    /// step equals the Gaussian density written out by hand from pso.md §3b,
    /// without the constant.
    #[test]
    fn transition_log_probs_are_the_hand_written_gaussians() {
        let dev = Device::Cpu;
        let config = SchedulerConfig::sd_turbo();
        let sched = crate::diffusion::NoiseSchedule::from_config(&config).unwrap();
        let x = Tensor::new(&[[0.5f64, -1.0], [2.0, 0.25]], &dev).unwrap();
        let eps = Tensor::new(&[[0.1f64, 0.3], [-0.2, 0.4]], &dev).unwrap();
        let prev = Tensor::new(&[[0.3f64, -0.7], [1.1, 0.0]], &dev).unwrap();
        let xv = x.to_vec2::<f64>().unwrap();
        let ev = eps.to_vec2::<f64>().unwrap();
        let pv = prev.to_vec2::<f64>().unwrap();
        let logp = |mean: &dyn Fn(f64, f64) -> f64, var: f64| -> Vec<f64> {
            (0..2).map(|b| (0..2).map(|d| -(pv[b][d] - mean(xv[b][d], ev[b][d])).powi(2) / (2.0 * var)).sum::<f64>() / 2.0).collect()
        };

        // DMD2 at step 1 of 999/749/499/249: t = 749 -> t' = 499.
        let s = build_sampler(Kind::Dmd2, &config, &Timesteps::Steps(4)).unwrap();
        let (ab, ab1) = (sched.alpha_bar(749.0), sched.alpha_bar(499.0));
        let mean = |x: f64, e: f64| ab1.sqrt() * (x - (1.0 - ab).sqrt() * e) / ab.sqrt();
        let want = logp(&mean, 1.0 - ab1);
        let tr = s.transition(1, &x, &eps).unwrap();
        let got = gaussian_log_prob(&prev, &tr.mean, tr.std).unwrap().to_vec1::<f64>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9 * w.abs().max(1.0), "dmd2 {g} vs {w}");
        }

        // Euler-ancestral at step 1: sigma_from = sigma(749), sigma_to = sigma(499).
        let s = build_sampler(Kind::EulerAncestral, &config, &Timesteps::Steps(4)).unwrap();
        let sig = |t: f64| ((1.0 - sched.alpha_bar(t)) / sched.alpha_bar(t)).sqrt();
        let (sf, st) = (sig(749.0), sig(499.0));
        let up = (st * st * (sf * sf - st * st) / (sf * sf)).sqrt();
        let down = (st * st - up * up).sqrt();
        let mean = |x: f64, e: f64| {
            let x0 = x - sf * e;
            x + (x - x0) / sf * (down - sf)
        };
        let want = logp(&mean, up * up);
        let tr = s.transition(1, &x, &eps).unwrap();
        let got = gaussian_log_prob(&prev, &tr.mean, tr.std).unwrap().to_vec1::<f64>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6 * w.abs().max(1.0), "euler {g} vs {w}");
        }
    }

    /// On the tiny model: with the adapters off, the recomputed policy
    /// log-prob equals the frozen one bit for bit (ratio exactly 1, loss
    /// exactly log 2), even with non-zero adapters; with them on it differs.
    #[test]
    fn adapters_off_give_ratio_exactly_one() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sd21-tiny");
        let mut pipe = Pipeline::load(&root, &LoadOptions::default()).unwrap();
        let lora = super::super::config::LoraSection { rank: 2, alpha: 2.0, ..Default::default() };
        let trainable = Trainable::attach(&mut pipe.unet, &lora).unwrap();
        let switch = trainable.switch().unwrap().clone();
        for (i, (_, v)) in trainable.vars().iter().enumerate() {
            v.set(&crate::diffusion::randn(v.dims(), 100 + i as u64, DType::F32, &Device::Cpu).unwrap().affine(0.5, 0.0).unwrap()).unwrap();
        }
        let size = (16, 16);
        let sampler = pipe.sampler(SamplerKind::Turbo, 4, None).unwrap();
        let embeds = pipe.encode_prompts(&["a red square", "a blue circle"]).unwrap();
        let chains = switch.run_disabled(|| sample_chains(&pipe, sampler.as_ref(), &embeds, &mut NoiseRng::new(1), size)).unwrap();
        assert_eq!(chains.xs.len(), 4);
        let lp = |on: bool| {
            let f = || transition_log_prob(&pipe, sampler.as_ref(), 1, &chains.xs[1], &chains.prevs[1], &embeds, size);
            if on {
                f().unwrap()
            } else {
                switch.run_disabled(f).unwrap()
            }
        };
        let (off_a, off_b, on) = (lp(false), lp(false), lp(true));
        assert_eq!(off_a.to_vec1::<f32>().unwrap(), off_b.to_vec1::<f32>().unwrap());
        let one = |t: &Tensor| t.narrow(0, 0, 1).unwrap();
        let two = |t: &Tensor| t.narrow(0, 1, 1).unwrap();
        let out = pso_online(&one(&off_a), &one(&off_b), &two(&off_a), &two(&off_b), 50.0, 0.1).unwrap();
        assert_eq!(out.loss.to_scalar::<f32>().unwrap() as f64, std::f32::consts::LN_2 as f64);
        assert_ne!(on.to_vec1::<f32>().unwrap(), off_a.to_vec1::<f32>().unwrap(), "adapters on must change the log-prob");
    }
}
