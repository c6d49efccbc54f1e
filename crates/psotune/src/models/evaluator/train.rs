//! Training the evaluator on a labelled image folder, resumably.
//!
//! The loop, per optimizer step:
//! 1. batch: the step's slice of the epoch's shuffle, randomly shifted;
//! 2. forward, loss = cross-entropy(style) + cross-entropy(category);
//! 3. backward, clip, AdamW step at the schedule's learning rate;
//! 4. log every `log_every` steps;
//! 5. at the end of an epoch: validate, record, checkpoint;
//!    every `checkpoint_every` steps: checkpoint.
//!
//! Shuffles and shifts are pure functions of (seed, epoch, step), so a run
//! resumed from a checkpoint takes exactly the batches it would have taken;
//! the checkpoint holds weights, optimizer moments, the step and the
//! per-epoch records (in the data cursor).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::config::EvaluatorConfig;
use super::data::{category_names, is_validation_concept, labeled_items, stream, ImageSet};
use super::init::init_weights;
use super::loss::cross_entropy;
use super::model::{accuracy, Evaluator, CONFIG_FILE, WEIGHTS_FILE};
use crate::data::ImageFolder;
use crate::error::{Error, Result};
use crate::nn::weights::write_safetensors;
use crate::nn::Weights;
use crate::train::{vars_to_tensors, AdamW, AdamWConfig, CheckpointContents, Grads, LrSchedule, RunDir};

pub const REPORT_FILE: &str = "report.json";

/// Hyper-parameters of [`train_evaluator`]; the defaults are the ones the
/// shipped evaluator was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluatorTrainConfig {
    /// Passes over the training images.
    pub epochs: u64,
    /// Images per optimizer step (the last partial batch of an epoch is dropped).
    pub batch_size: usize,
    /// Peak AdamW learning rate (cosine decay to 0 after warmup).
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    /// Fraction of concepts (all their styles) kept for validation.
    pub val_fraction: f64,
    /// Largest random shift of a training image, in pixels per axis.
    pub max_shift: usize,
    /// Seed of the initial weights, shuffles and shifts.
    pub seed: u64,
    /// Checkpoint every this many steps (and at every epoch end).
    pub checkpoint_every: u64,
    /// Print a progress line every this many steps.
    pub log_every: u64,
    /// Side of the (square) images.
    pub image_size: usize,
    /// Class order of the style head; every training image's `style` must be one.
    pub styles: Vec<String>,
    /// Channels per resolution level ([`EvaluatorConfig::block_channels`]).
    pub block_channels: Vec<usize>,
    /// Residual blocks per level ([`EvaluatorConfig::layers_per_block`]).
    pub layers_per_block: usize,
    /// GroupNorm groups ([`EvaluatorConfig::norm_num_groups`]).
    pub norm_num_groups: usize,
}

impl Default for EvaluatorTrainConfig {
    fn default() -> Self {
        EvaluatorTrainConfig {
            epochs: 8,
            batch_size: 64,
            lr: 2e-3,
            weight_decay: 0.05,
            warmup_steps: 50,
            max_grad_norm: 1.0,
            val_fraction: 0.1,
            max_shift: 2,
            seed: 0,
            checkpoint_every: 100,
            log_every: 20,
            image_size: 32,
            styles: ["twemoji", "noto", "openmoji"].map(String::from).to_vec(),
            block_channels: vec![32, 64, 128],
            layers_per_block: 1,
            norm_num_groups: 8,
        }
    }
}

/// One epoch's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    pub epoch: u64,
    /// Mean training loss (style + category) over the epoch's steps.
    pub train_loss: f64,
    pub val_style_accuracy: f64,
    pub val_category_accuracy: f64,
    /// Wall-clock seconds of the epoch's steps run by the process that
    /// finished it (a resumed epoch counts only its own part).
    pub seconds: f64,
}

/// `report.json`: what was trained on and how well it does on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorReport {
    pub train_images: usize,
    pub val_images: usize,
    pub train_concepts: usize,
    pub val_concepts: usize,
    pub steps: u64,
    /// Validation accuracy of the style head, overall and per true style.
    pub val_style_accuracy: f64,
    pub val_style_accuracy_by_style: BTreeMap<String, f64>,
    /// Validation accuracy of the category head (unseen concepts of known
    /// subgroups).
    pub val_category_accuracy: f64,
    pub history: Vec<EpochRecord>,
    pub config: EvaluatorTrainConfig,
}

/// What the checkpoint's data cursor holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    history: Vec<EpochRecord>,
    /// Loss sum and step count of the unfinished epoch.
    loss_sum: f64,
    loss_steps: u64,
}

/// Train an evaluator on the folder `data_dir` (see [`super::data`] for
/// the fields it needs), with checkpoints in `run_dir` (a run killed
/// mid-way continues from its newest checkpoint when called again with the
/// same config), and write `out_dir/{config.json, model.safetensors,
/// report.json}`.
pub fn train_evaluator(data_dir: &Path, run_dir: &Path, out_dir: &Path, cfg: &EvaluatorTrainConfig) -> Result<EvaluatorReport> {
    match train_until(data_dir, run_dir, out_dir, cfg, None)? {
        Some(report) => Ok(report),
        None => Err(Error::invalid("evaluator training stopped before its last step")),
    }
}

/// [`train_evaluator`], stopping (after a checkpoint) once `stop_after`
/// steps are done; `None` when it stopped early (tests use it to interrupt
/// a run).
pub(crate) fn train_until(
    data_dir: &Path,
    run_dir: &Path,
    out_dir: &Path,
    cfg: &EvaluatorTrainConfig,
    stop_after: Option<u64>,
) -> Result<Option<EvaluatorReport>> {
    check_train_config(cfg)?;
    let dev = Device::Cpu;

    // Data: every problem is reported before any training.
    let folder = ImageFolder::open(data_dir)?;
    let categories = category_names(&folder)?;
    let items = labeled_items(&folder, &cfg.styles, &categories)?;
    let (val_items, train_items): (Vec<_>, Vec<_>) = items.into_iter().partition(|l| is_validation_concept(l.concept, cfg.val_fraction));
    if train_items.len() < cfg.batch_size {
        return Err(Error::data(data_dir, None, format!("{} training images, fewer than one batch of {}", train_items.len(), cfg.batch_size)));
    }
    if val_items.is_empty() {
        return Err(Error::data(data_dir, None, format!("no validation concepts with val_fraction {}", cfg.val_fraction)));
    }
    let count_concepts = |v: &[super::data::Labeled]| v.iter().map(|l| l.concept).collect::<std::collections::BTreeSet<_>>().len();
    let (train_concepts, val_concepts) = (count_concepts(&train_items), count_concepts(&val_items));
    eprintln!(
        "evaluator: {} training images ({train_concepts} concepts), {} validation images ({val_concepts} concepts), {} categories; loading",
        train_items.len(),
        val_items.len(),
        categories.len()
    );
    let train = ImageSet::load(&train_items, cfg.image_size)?;
    let val = ImageSet::load(&val_items, cfg.image_size)?;

    // Model, optimizer, schedule, run directory.
    let model_cfg = EvaluatorConfig {
        image_size: cfg.image_size,
        in_channels: 3,
        block_channels: cfg.block_channels.clone(),
        layers_per_block: cfg.layers_per_block,
        norm_num_groups: cfg.norm_num_groups,
        styles: cfg.styles.clone(),
        categories,
    };
    model_cfg.check().map_err(|msg| Error::invalid(format!("evaluator training config: {msg}")))?;
    let weights = Weights::from_tensors(init_weights(&model_cfg, cfg.seed)?, "evaluator init", DType::F32, &dev).trainable();
    let model = Evaluator::new(weights.var_builder(), &model_cfg)?;
    weights.finish()?;
    let adamw = AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..AdamWConfig::default() };
    let mut opt = AdamW::new(weights.vars(), adamw)?;
    let steps_per_epoch = (train.len() / cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs;
    let schedule = LrSchedule::cosine(cfg.warmup_steps, total_steps);

    // The run directory's `config.toml` holds this JSON text: RunDir only
    // hashes and compares it, and the evaluator's configs are JSON.
    let run_config = serde_json::json!({ "train": cfg, "model": model_cfg, "train_images": train.len() });
    let run_config = serde_json::to_string_pretty(&run_config).map_err(|source| Error::Json { path: run_dir.into(), source })?;
    let run = RunDir::open(run_dir, &run_config)?.keep_last(2);
    let mut step = 0u64;
    let mut progress = Progress::default();
    if let Some(ck) = run.latest()? {
        ck.restore_weights(opt.params())?;
        ck.restore_optimizer(&mut opt)?;
        step = ck.step();
        progress = serde_json::from_value(ck.state().data_cursor.clone())
            .map_err(|e| Error::Checkpoint { path: ck.dir().into(), msg: format!("data cursor: {e}") })?;
        eprintln!("evaluator: resuming at step {step} of {total_steps}");
    }
    let save = |step: u64, opt: &AdamW, progress: &Progress| -> Result<()> {
        let cursor = serde_json::to_value(progress).map_err(|source| Error::Json { path: run_dir.into(), source })?;
        let contents = CheckpointContents {
            step,
            weights: &vars_to_tensors(opt.params()),
            optimizer: opt,
            rng: BTreeMap::new(),
            data_cursor: cursor,
            loss_scale: None,
        };
        run.save(&contents).map(|_| ())
    };

    let mut epoch_start = Instant::now();
    let mut log_start = (Instant::now(), step);
    while step < total_steps {
        if stop_after.is_some_and(|s| step >= s) {
            save(step, &opt, &progress)?;
            return Ok(None);
        }
        let epoch = step / steps_per_epoch;
        let in_epoch = (step % steps_per_epoch) as usize;

        // 1. batch
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut stream(cfg.seed, 1, epoch));
        let idx = &order[in_epoch * cfg.batch_size..(in_epoch + 1) * cfg.batch_size];
        let x = train.batch(idx, cfg.max_shift, &mut stream(cfg.seed, 2, step))?;
        let style_t: Vec<usize> = idx.iter().map(|&i| train.styles[i]).collect();
        let cat_t: Vec<usize> = idx.iter().map(|&i| train.categories[i]).collect();

        // 2. forward and loss
        let out = model.forward(&x)?;
        let loss = (cross_entropy(&out.style_logits, &style_t)? + cross_entropy(&out.category_logits, &cat_t)?)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(Error::invalid(format!("evaluator training: loss is {loss_value} at step {step}; lower lr")));
        }

        // 3. backward and update
        let mut grads = Grads::from_store(&loss.backward()?, opt.params());
        if cfg.max_grad_norm > 0.0 {
            grads.clip_global_norm(cfg.max_grad_norm)?;
        }
        opt.set_lr(schedule.lr(cfg.lr, step));
        opt.step(&grads)?;
        step += 1;
        progress.loss_sum += loss_value;
        progress.loss_steps += 1;

        // 4. log
        if step.is_multiple_of(cfg.log_every.max(1)) {
            let rate = (step - log_start.1) as f64 / log_start.0.elapsed().as_secs_f64();
            eprintln!(
                "evaluator: step {step}/{total_steps} epoch {} loss {loss_value:.4} lr {:.2e} ({rate:.2} steps/s)",
                epoch + 1,
                opt.lr()
            );
            log_start = (Instant::now(), step);
        }

        // 5. epoch end / checkpoint
        if step.is_multiple_of(steps_per_epoch) {
            let ((style_acc, cat_acc), _) = validate(&model, &val, &cfg.styles)?;
            let record = EpochRecord {
                epoch: epoch + 1,
                train_loss: progress.loss_sum / progress.loss_steps.max(1) as f64,
                val_style_accuracy: style_acc,
                val_category_accuracy: cat_acc,
                seconds: epoch_start.elapsed().as_secs_f64(),
            };
            eprintln!(
                "evaluator: epoch {} done in {:.1} s: train loss {:.4}, validation style accuracy {:.3}, category accuracy {:.3}",
                record.epoch, record.seconds, record.train_loss, record.val_style_accuracy, record.val_category_accuracy
            );
            progress.history.push(record);
            progress.loss_sum = 0.0;
            progress.loss_steps = 0;
            save(step, &opt, &progress)?;
            epoch_start = Instant::now();
        } else if step.is_multiple_of(cfg.checkpoint_every.max(1)) {
            save(step, &opt, &progress)?;
        }
    }

    // Final outputs.
    let ((style_acc, cat_acc), by_style) = validate(&model, &val, &cfg.styles)?;
    let report = EvaluatorReport {
        train_images: train.len(),
        val_images: val.len(),
        train_concepts,
        val_concepts,
        steps: step,
        val_style_accuracy: style_acc,
        val_style_accuracy_by_style: by_style,
        val_category_accuracy: cat_acc,
        history: progress.history,
        config: cfg.clone(),
    };
    write_outputs(out_dir, &model_cfg, &opt, &report)?;
    Ok(Some(report))
}

fn check_train_config(cfg: &EvaluatorTrainConfig) -> Result<()> {
    let bad = |msg: &str| Err(Error::invalid(format!("evaluator training config: {msg}")));
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return bad("epochs and batch_size must be positive");
    }
    if !(cfg.val_fraction > 0.0 && cfg.val_fraction < 1.0) {
        return bad("val_fraction must be in (0, 1)");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return bad("lr must be positive");
    }
    if cfg.max_shift >= cfg.image_size {
        return bad("max_shift must be smaller than image_size");
    }
    Ok(())
}

/// ((style accuracy, category accuracy), style accuracy per true style) on
/// the validation images, unshifted.
#[allow(clippy::type_complexity)]
fn validate(model: &Evaluator, val: &ImageSet, styles: &[String]) -> Result<((f64, f64), BTreeMap<String, f64>)> {
    let all: Vec<usize> = (0..val.len()).collect();
    let images = val.batch(&all, 0, &mut stream(0, 0, 0))?;
    let out = model.forward_batched(&images)?;
    let style_acc = accuracy(&out.style_logits, &val.styles)?;
    let cat_acc = accuracy(&out.category_logits, &val.categories)?;
    let pred = out.style_logits.argmax(1)?.to_vec1::<u32>()?;
    let mut by_style = BTreeMap::new();
    for (k, name) in styles.iter().enumerate() {
        let rows: Vec<usize> = (0..val.len()).filter(|&i| val.styles[i] == k).collect();
        if !rows.is_empty() {
            let hits = rows.iter().filter(|&&i| pred[i] as usize == k).count();
            by_style.insert(name.clone(), hits as f64 / rows.len() as f64);
        }
    }
    Ok(((style_acc, cat_acc), by_style))
}

/// `config.json`, `model.safetensors` and `report.json` in `out_dir`.
fn write_outputs(out_dir: &Path, model_cfg: &EvaluatorConfig, opt: &AdamW, report: &EvaluatorReport) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let tensors: std::collections::HashMap<String, Tensor> = vars_to_tensors(opt.params()).into_iter().collect();
    write_safetensors(&tensors, &out_dir.join(WEIGHTS_FILE))?;
    for (name, value) in [
        (CONFIG_FILE, serde_json::to_value(model_cfg)),
        (REPORT_FILE, serde_json::to_value(report)),
    ] {
        let path = out_dir.join(name);
        let text = value.and_then(|v| serde_json::to_string_pretty(&v)).map_err(|source| Error::Json { path: path.clone(), source })?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
