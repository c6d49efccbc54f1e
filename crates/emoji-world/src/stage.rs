//! The resumable skeleton every training stage shares: a run directory
//! with checkpoints (train::RunDir), AdamW, one RNG stream, the shuffled
//! data cursor, a learning-rate schedule, metrics.jsonl and a progress bar.
//! A stage killed at any point restarts from its newest checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use psotune::diffusion::NoiseRng;
use psotune::train::{vars_to_tensors, AdamW, AdamWConfig, CheckpointContents, Grads, LrSchedule, RunDir};

use crate::dataset::Shuffler;

/// Marker written when a stage has produced its outputs.
pub const DONE_FILE: &str = "DONE";

pub fn is_done(dir: &Path) -> bool {
    dir.join(DONE_FILE).is_file()
}

pub fn mark_done(dir: &Path, summary: &serde_json::Value) -> Result<()> {
    std::fs::write(dir.join(DONE_FILE), serde_json::to_string_pretty(summary)?)?;
    Ok(())
}

/// The run directory `WORK/<name>` of a stage, created; None when the
/// stage already finished (it is then skipped).
pub fn begin(ctx: &crate::Ctx, name: &str) -> Result<Option<PathBuf>> {
    let dir = ctx.work.join(name);
    if is_done(&dir) {
        eprintln!("{name}: done ({})", dir.display());
        return Ok(None);
    }
    std::fs::create_dir_all(&dir)?;
    Ok(Some(dir))
}

/// A progress bar over `len` units, labelled `prefix`.
pub fn counter_bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

pub struct TrainerSpec {
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    pub total_steps: u64,
    pub checkpoint_every: u64,
    pub seed: u64,
    pub data_len: usize,
    pub grad_clip: f64,
}

pub struct Trainer {
    pub run: RunDir,
    pub opt: AdamW,
    pub step: u64,
    pub rng: NoiseRng,
    pub data: Shuffler,
    /// Saved and restored with the weights but not optimised (EMA copies).
    extra: Vec<(String, Var)>,
    spec: TrainerSpec,
    metrics: PathBuf,
    bar: ProgressBar,
    started: Instant,
}

impl Trainer {
    /// Open (or resume) the stage's run directory `dir` for `config` (the
    /// stage's resolved recipe: a different recipe refuses to resume).
    pub fn open(dir: &Path, config: &str, params: Vec<(String, Var)>, extra: Vec<(String, Var)>, spec: TrainerSpec) -> Result<Self> {
        let run = RunDir::open(dir, config)?.keep_last(2);
        let adamw = AdamWConfig { lr: spec.lr, weight_decay: spec.weight_decay, ..AdamWConfig::default() };
        let mut opt = AdamW::new(params, adamw)?;
        let mut step = 0;
        let mut rng = NoiseRng::new(spec.seed);
        let mut data = Shuffler::new(spec.data_len, spec.seed ^ 0x5eed);
        if let Some(ck) = run.latest()? {
            let mut all: Vec<(String, Var)> = opt.params().to_vec();
            all.extend(extra.iter().cloned());
            ck.restore_weights(&all)?;
            ck.restore_optimizer(&mut opt)?;
            step = ck.step();
            let state = ck.state();
            rng = NoiseRng::from_state(*state.rng.get("main").context("checkpoint without the `main` RNG")?);
            data = Shuffler::restore(serde_json::from_value(state.data_cursor.clone())?);
            eprintln!("{}: resuming at step {step}", dir.display());
        }
        let metrics = dir.join("metrics.jsonl");
        truncate_metrics(&metrics, step)?;
        let bar = counter_bar(spec.total_steps, &dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        bar.set_position(step);
        Ok(Trainer { run, opt, step, rng, data, extra, spec, metrics, bar, started: Instant::now() })
    }

    pub fn finished(&self) -> bool {
        self.step >= self.spec.total_steps
    }

    /// Backward, clip, one AdamW step at the scheduled rate, metrics, and a
    /// checkpoint when due. Returns the gradient norm before clipping.
    pub fn update(&mut self, loss: &Tensor, mut record: serde_json::Map<String, serde_json::Value>) -> Result<f64> {
        let store = loss.backward()?;
        let mut grads = Grads::from_store(&store, self.opt.params());
        let norm = grads.clip_global_norm(self.spec.grad_clip)?;
        let lr = self.spec.schedule.lr(self.spec.lr, self.step);
        self.opt.set_lr(lr);
        self.opt.step(&grads)?;
        self.step += 1;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        record.insert("step".into(), self.step.into());
        record.insert("loss".into(), loss_v.into());
        record.insert("grad_norm".into(), norm.into());
        record.insert("lr".into(), lr.into());
        record.insert("seconds".into(), self.started.elapsed().as_secs_f64().into());
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.metrics)?;
        writeln!(f, "{}", serde_json::Value::Object(record))?;
        self.bar.set_position(self.step);
        self.bar.set_message(format!("loss {loss_v:.4}"));
        if self.step.is_multiple_of(self.spec.checkpoint_every) || self.finished() {
            self.save()?;
        }
        Ok(norm)
    }

    pub fn save(&self) -> Result<()> {
        let mut all: Vec<(String, Var)> = self.opt.params().to_vec();
        all.extend(self.extra.iter().cloned());
        let weights = vars_to_tensors(&all);
        let mut rng = BTreeMap::new();
        rng.insert("main".to_string(), self.rng.state());
        self.run.save(&CheckpointContents {
            step: self.step,
            weights: &weights,
            optimizer: &self.opt,
            rng,
            data_cursor: serde_json::to_value(&self.data)?,
            loss_scale: None,
        })?;
        Ok(())
    }

    pub fn finish_bar(&self) {
        self.bar.finish();
    }

}

/// Drop metric lines past `step` (written after the checkpoint we resume from).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// Exponential moving average of parameters, kept as Vars so that
/// checkpoints carry it (see [`Trainer::open`]'s `extra`).
pub struct Ema {
    pub decay: f64,
    pub pairs: Vec<(Var, Var)>,
}

impl Ema {
    /// EMA copies of `params`, named `ema.<name>`.
    pub fn new(params: &[(String, Var)], decay: f64) -> Result<(Self, Vec<(String, Var)>)> {
        let mut pairs = Vec::new();
        let mut named = Vec::new();
        for (name, p) in params {
            let e = Var::from_tensor(&p.as_tensor().copy()?)?;
            named.push((format!("ema.{name}"), e.clone()));
            pairs.push((p.clone(), e));
        }
        Ok((Ema { decay, pairs }, named))
    }

    /// EMA over `online` kept in `shadow`, matched by name (both lists
    /// come from models built on the same keys).
    pub fn pair(online: &[(String, Var)], shadow: &[(String, Var)], decay: f64) -> Result<Self> {
        let by_name: std::collections::HashMap<&str, &Var> = shadow.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut pairs = Vec::new();
        for (name, p) in online {
            let e = by_name.get(name.as_str()).with_context(|| format!("EMA: no shadow for {name}"))?;
            pairs.push((p.clone(), (*e).clone()));
        }
        Ok(Ema { decay, pairs })
    }

    pub fn update(&self) -> Result<()> {
        for (p, e) in &self.pairs {
            let next = ((e.as_tensor() * self.decay)? + (p.as_tensor() * (1.0 - self.decay))?)?;
            e.set(&next)?;
        }
        Ok(())
    }
}
