//! What a run writes besides checkpoints: `metrics.jsonl` (one JSON object
//! per optimizer step), sample grids (`samples/step-000100.png`) and the
//! cached references (`references/step-000000.{safetensors,png}`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::data::splitmix;
use crate::error::{Error, Result};
use crate::nn::weights::read_safetensors;
use crate::pipeline::image::save_png;
use crate::pipeline::{Pipeline, SampleRequest};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SAMPLES_DIR: &str = "samples";
pub const REFERENCES_DIR: &str = "references";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps completed.
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Implicit accuracy (pair objectives only).
    pub acc: Option<f64>,
    /// Mean logit margin (pair objectives only).
    pub margin: Option<f64>,
    /// Learning rate of this step's update.
    pub lr: f64,
    /// Global gradient norm before clipping; None for an f16 step skipped
    /// because its gradients overflowed.
    pub grad_norm: Option<f64>,
    /// f16 runs: the dynamic loss scale after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16 runs: steps skipped for overflow so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
    /// Mean one-step transfer term (x0 MSE), when `objective.one-step-transfer` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<f64>,
    /// Pair objectives trained at more than one timestep: the step's pairs
    /// by training timestep (which timestep the loss is lowered at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_timestep: Option<BTreeMap<String, TimestepStats>>,
}

/// The pairs of one training timestep within a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimestepStats {
    /// Pairs drawn at this timestep.
    pub pairs: usize,
    /// Their mean loss.
    pub loss: f64,
    /// Their mean logit.
    pub margin: f64,
    /// Fraction with a positive logit (the target favoured).
    pub acc: f64,
}

impl TimestepStats {
    /// Group per-pair (loss, logit) by the pairs' timesteps `t`, adding to `into`.
    pub fn add(into: &mut BTreeMap<String, TimestepStats>, t: &[f64], loss: &[f64], logit: &[f64]) {
        for ((t, l), z) in t.iter().zip(loss).zip(logit) {
            let s = into.entry(format!("{t}")).or_default();
            let n = s.pairs as f64;
            // Running means: exact enough for a log, and no second pass.
            s.loss = (s.loss * n + l) / (n + 1.0);
            s.margin = (s.margin * n + z) / (n + 1.0);
            s.acc = (s.acc * n + if *z > 0.0 { 1.0 } else { 0.0 }) / (n + 1.0);
            s.pairs += 1;
        }
    }
}

/// Appends JSON lines that carry a `step` field ([`StepMetrics`], the
/// online task's metrics and validation records).
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Open `path` for a run that continues after `step` optimizer steps:
    /// lines of later steps (written before a crash, after the checkpoint
    /// being resumed) are dropped so every step appears once.
    pub fn open(path: &Path, step: u64) -> Result<Self> {
        let kept = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["step"].as_u64().is_some_and(|s| s <= step)))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        std::fs::write(path, kept).map_err(|e| Error::io(path, e))?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, m: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(m).map_err(|source| Error::Json { path: self.path.clone(), source })?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Lay [3, H, W] images out in a grid of `cols` columns (row-major).
pub fn tile(images: &[Tensor], cols: usize) -> Result<Tensor> {
    let cols = cols.max(1);
    let mut rows = Vec::new();
    for chunk in images.chunks(cols) {
        let mut row: Vec<Tensor> = chunk.to_vec();
        // Pad a short last row with white.
        while row.len() < cols {
            row.push(chunk[0].ones_like()?);
        }
        rows.push(Tensor::cat(&row, 2)?);
    }
    if rows.is_empty() {
        return Err(Error::invalid("tile: no images"));
    }
    Ok(Tensor::cat(&rows, 1)?)
}

/// `samples/step-NNNNNN.png`: one row per prompt, one column per seed, at
/// the model's own sampler (or `steps`) with the adapters as they are now.
pub fn sample_grid(pipe: &Pipeline, prompts: &[String], seeds: &[u64], steps: Option<usize>, path: &Path) -> Result<()> {
    let mut images = Vec::with_capacity(prompts.len() * seeds.len());
    for p in prompts {
        for &seed in seeds {
            let out = pipe.sample(&SampleRequest { prompts: vec![p.clone()], steps, seed, ..Default::default() })?;
            images.push(out.images.get(0)?);
        }
    }
    save_png(&tile(&images, seeds.len())?, path)
}

pub fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The references of the refresh at `step` (0: before training): read from
/// `references/step-N.safetensors` when a previous (killed) run of this
/// directory sampled them, else sampled now by the model as it is (same
/// seeds either way) and saved, with a PNG grid to look at.
pub fn sampled_references(pipe: &Pipeline, prompts: &[String], run_dir: &Path, step: u64, seed: u64) -> Result<Vec<Tensor>> {
    let dir = run_dir.join(REFERENCES_DIR);
    let file = dir.join(format!("{}.safetensors", step_name(step)));
    if file.is_file() {
        let t = read_safetensors(&file)?;
        let lat = t.get("latents").ok_or_else(|| Error::Checkpoint { path: file.clone(), msg: "no tensor `latents`".into() })?;
        if lat.dim(0)? != prompts.len() {
            return Err(Error::Checkpoint { path: file, msg: format!("{} references, the run needs {}", lat.dim(0)?, prompts.len()) });
        }
        return (0..prompts.len()).map(|i| Ok(lat.get(i)?)).collect();
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let (mut latents, mut images) = (Vec::new(), Vec::new());
    for (c, chunk) in prompts.chunks(8).enumerate() {
        let req = SampleRequest { prompts: chunk.to_vec(), seed: splitmix(seed ^ splitmix(step)).wrapping_add(c as u64), ..Default::default() };
        let out = pipe.sample(&req)?;
        for i in 0..chunk.len() {
            // Detached: the samples were made by the trained network, and a
            // reference must be data, not a path for gradients back through
            // the whole sampling chain (which a resumed run, reading them
            // from the file, would not have).
            latents.push(out.latents.get(i)?.to_dtype(DType::F32)?.detach());
            images.push(out.images.get(i)?);
        }
    }
    save_png(&tile(&images, 8)?, &dir.join(format!("{}.png", step_name(step))))?;
    // Written under a temporary name and renamed: a killed run never
    // leaves a half file that a resume would trust.
    let tmp = dir.join(format!(".tmp-{}.safetensors", step_name(step)));
    let mut map = HashMap::new();
    map.insert("latents".to_string(), Tensor::stack(&latents, 0)?);
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))?;
    Ok(latents)
}
