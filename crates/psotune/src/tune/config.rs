//! The typed run configuration of `psotune tune`: one TOML file, one
//! section per part of the run (pso.md's official settings are the
//! defaults where it has them), `--set section.key=value` overrides, and a
//! resolved form (defaults filled in, paths absolute) that is printed by
//! `--print-config` and saved as the run directory's `config.toml`.
//!
//! Relative paths in a config are relative to the directory psotune runs in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::objectives::ObjectiveKind;

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunConfig {
    /// The model to tune.
    pub model: ModelConfig,
    /// LoRA adapters (the default) or full fine-tuning of parameter groups.
    #[serde(default)]
    pub lora: LoraSection,
    /// The loss and its timesteps.
    #[serde(default)]
    pub objective: ObjectiveConfig,
    /// The task and its data.
    pub data: DataConfig,
    /// Optimizer, schedule, batch and step counts, seed.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Sample grids at fixed prompts and seeds during training.
    #[serde(default)]
    pub validation: ValidationConfig,
    /// How often to checkpoint and how many checkpoints to keep.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Online PSO settings (only with `data.kind = "online"`; defaults filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<super::online::OnlineConfig>,
    /// The reward that ranks online samples and scores validation (only
    /// with `data.kind = "online"`, where it is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<crate::reward::RewardConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelConfig {
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, ...).
    pub path: PathBuf,
    /// Dtype of the frozen base weights and of the activations: f32, f16 or
    /// bf16. Trained parameters (LoRA factors, full-tuning groups) and
    /// AdamW's moments are f32 master weights whatever this says. On the
    /// CPU, bf16 weights are rounded to bf16 and computed with in f32
    /// (candle has no bf16 CPU kernels), so one config runs on both.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Weight-file variant to prefer (`fp16` for `*.fp16.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Where the run computes: `cpu` (the default) or `cuda[:N]` (a build
    /// with `--features cuda`). Not saved in the run directory's
    /// config.toml and not compared by `--resume`: a run started on one
    /// machine resumes on another (`psotune tune --resume DIR --device ..`).
    /// Noise is drawn on the host, so a run's numbers do not depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Gradient checkpointing: each UNet resnet and transformer keeps only
    /// its inputs and is recomputed in the backward pass. Same gradients,
    /// far less memory (SD 2.1 at 256x256: see the README), about one more
    /// UNet forward of time per step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// Guidance scale the model samples and trains with, replacing the
    /// folder's default. For a UNet with a guidance embedding (the full LCM
    /// UNets, `time_cond_proj_dim`) it is the embedded scale w + 1, in every
    /// objective; for other models classifier-free guidance while sampling
    /// (training predictions are unguided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
}

fn default_dtype() -> String {
    "f32".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LoraSection {
    /// Adapter rank (the paper: 16 for DMD2, 32 for Turbo).
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// LoRA alpha; the adapter output is scaled by alpha / rank.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Which layers get adapters: a preset (attn = to_q/to_k/to_v/to_out.0 as
    /// in the paper, attn-ff, all-linear, all) or comma-separated module-path
    /// regular expressions.
    #[serde(default = "default_targets")]
    pub targets: String,
    /// Start from the adapters of this LoRA file (diffusers/PEFT or kohya)
    /// instead of fresh ones; rank, alpha and targets then come from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Full fine-tuning instead of LoRA: module-path regular expressions
    /// whose weights and biases are trained (e.g. `["up_blocks\\.1\\..*"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Vec<String>>,
    /// Seed of the adapters' initial A matrices.
    #[serde(default)]
    pub seed: u64,
    /// Also train LoRA on the text encoder(s) (prompt embeddings are then
    /// recomputed every step instead of cached).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_encoder: bool,
    /// Text-encoder adapter rank (default: `rank`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder_rank: Option<usize>,
    /// Text-encoder LoRA alpha (default: `alpha`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder_alpha: Option<f64>,
    /// Text-encoder layers: a preset (attn = q/k/v/out_proj, attn-ff adds
    /// mlp.fc1/fc2, all-linear / all = both) or module-path regular
    /// expressions (default: `targets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder_targets: Option<String>,
}

impl LoraSection {
    /// The text encoders' rank, alpha and targets (the UNet's unless set).
    pub fn text_encoder_settings(&self) -> (usize, f64, &str) {
        (
            self.text_encoder_rank.unwrap_or(self.rank),
            self.text_encoder_alpha.unwrap_or(self.alpha),
            self.text_encoder_targets.as_deref().unwrap_or(&self.targets),
        )
    }
}

fn default_rank() -> usize {
    16
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> String {
    "attn".into()
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            targets: default_targets(),
            init_from: None,
            full: None,
            seed: 0,
            text_encoder: false,
            text_encoder_rank: None,
            text_encoder_alpha: None,
            text_encoder_targets: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// pso | pso-hinge | diffusion-dpo | sft | sft-distilled; with
    /// `data.kind = "online"`: pso (online PSO) or d3po (its baseline).
    #[serde(default = "default_kind")]
    pub kind: ObjectiveKind,
    /// Inverse temperature (default per kind: pso 50, pso-hinge 5,
    /// diffusion-dpo 5000, d3po 50; unused by the sft losses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Training timesteps for pso / pso-hinge / sft-distilled (default: the
    /// model's own sampling timesteps, e.g. 999/749/499/249). The PSO
    /// authors' concept trainer uses [750, 500, 250, 0] (see
    /// examples/concept.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<usize>>,
    /// Weight of the one-step transfer term (0: off). Each micro-batch
    /// also samples the model's own K-step chain from fresh noise, tuned
    /// and frozen, and pulls the tuned 1-step output for that noise toward
    /// the frozen 1-step output plus the change tuning made to the K-step
    /// output, so that 1-step samples follow what the objective teaches
    /// the K-step ones (x0-space MSE; needs LoRA). Not part of the paper:
    /// see the README's style-transfer experiments for why.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub one_step_transfer: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn default_kind() -> ObjectiveKind {
    ObjectiveKind::Pso
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self { kind: default_kind(), beta: None, timesteps: None, one_step_transfer: 0.0 }
    }
}

/// The task: where targets come from and what the references are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// Style transfer: captioned style images are targets, model samples for
    /// the same captions are references.
    #[serde(rename_all = "kebab-case")]
    Style {
        /// Image folder: `metadata.jsonl` (`file_name`, `text`, other fields)
        /// or images with `.txt` caption sidecars.
        images: PathBuf,
        /// Keep only manifest lines whose fields equal these values
        /// (e.g. `{ style = "noto", split = "train" }`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        select: BTreeMap<String, String>,
        /// Model samples per caption to draw references from.
        #[serde(default = "one")]
        references_per_caption: usize,
        /// Re-sample references with the current model every K steps (0:
        /// sample once before training).
        #[serde(default)]
        refresh_references_every: u64,
    },
    /// Offline preference pairs: chosen images are targets, rejected ones
    /// references.
    #[serde(rename_all = "kebab-case")]
    Pairs {
        /// JSONL, one `{"prompt", "chosen", "rejected"}` per line, image paths
        /// relative to the manifest's folder; or a Pick-a-Pic v2 parquet file
        /// (`caption`, `jpg_0`, `jpg_1`, `label_0`; ties skipped, images
        /// resized and centre-cropped to the model's size).
        manifest: PathBuf,
        /// jsonl | parquet (default: by the file's extension, `.parquet` is
        /// parquet, anything else JSONL).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<PairsFormat>,
    },
    /// Concept customization: a few subject images under an instance prompt
    /// are targets, model samples of the class prompt (trained under the
    /// instance prompt) references.
    #[serde(rename_all = "kebab-case")]
    Concept {
        /// Folder with the 3-5 subject images, or an image folder with a
        /// `metadata.jsonl` from which `select` picks them.
        instance_dir: PathBuf,
        /// With a `metadata.jsonl`: keep the lines whose fields equal these
        /// values (e.g. `{ concept = "1f419" }`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        select: BTreeMap<String, String>,
        /// Prompt with a rare token, e.g. "an emoji of sks cat".
        instance_prompt: String,
        /// The class prompt, e.g. "an emoji of a cat".
        class_prompt: String,
        /// Class images sampled from the initial model.
        #[serde(default = "twenty")]
        num_class_images: usize,
        /// Re-sample references with the current model every K steps (0:
        /// sample once before training).
        #[serde(default)]
        refresh_references_every: u64,
    },
    /// Online PSO (pso.md §3b): no fixed data; two samples per prompt from
    /// the current model, ranked by `[reward]`. Settings in `[online]`.
    #[serde(rename_all = "kebab-case")]
    Online {
        /// Training prompts: a text file, one prompt per line (blank lines
        /// and lines starting with `#` are skipped).
        prompts: PathBuf,
        /// Held-out prompts for the validation reward, same format (default:
        /// `validation.prompts`, else the first four training prompts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        validation_prompts: Option<PathBuf>,
    },
}

/// The file format of an offline pairs set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairsFormat {
    Jsonl,
    Parquet,
}

impl PairsFormat {
    /// The format `format` names, else the one `path`'s extension implies.
    pub fn of(path: &Path, format: Option<PairsFormat>) -> PairsFormat {
        format.unwrap_or_else(|| match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") => PairsFormat::Parquet,
            _ => PairsFormat::Jsonl,
        })
    }
}

fn one() -> usize {
    1
}
fn twenty() -> usize {
    20
}

impl DataConfig {
    pub fn refresh_every(&self) -> u64 {
        match self {
            DataConfig::Style { refresh_references_every: k, .. } | DataConfig::Concept { refresh_references_every: k, .. } => *k,
            DataConfig::Pairs { .. } | DataConfig::Online { .. } => 0,
        }
    }
}

/// Learning-rate schedule shapes (diffusers' `get_scheduler` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OptimConfig {
    /// AdamW learning rate (the paper: 1e-5; concept customization 2e-4).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay (the paper: 1e-6).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// AdamW (beta1, beta2).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global norm (the paper: 1.0; 0 = off).
    #[serde(default = "one_f")]
    pub grad_clip: f64,
    /// Linear warmup steps.
    #[serde(default)]
    pub warmup: u64,
    /// constant | linear | cosine (after warmup).
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    /// Pairs per micro-batch (the paper: 2-4).
    #[serde(default = "two")]
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    #[serde(default = "two")]
    pub grad_accum: usize,
    /// Optimizer steps to train.
    #[serde(default = "default_steps")]
    pub max_steps: u64,
    /// Seeds data order, noise and timesteps.
    #[serde(default)]
    pub seed: u64,
}

fn default_lr() -> f64 {
    1e-5
}
fn default_wd() -> f64 {
    1e-6
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn one_f() -> f64 {
    1.0
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn two() -> usize {
    2
}
fn default_steps() -> u64 {
    500
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            weight_decay: default_wd(),
            betas: default_betas(),
            eps: default_eps(),
            grad_clip: 1.0,
            warmup: 0,
            schedule: default_schedule(),
            batch_size: 2,
            grad_accum: 2,
            max_steps: default_steps(),
            seed: 0,
        }
    }
}

impl OptimConfig {
    pub fn lr_schedule(&self) -> crate::train::LrSchedule {
        use crate::train::LrSchedule;
        match (self.schedule, self.warmup) {
            (ScheduleKind::Constant, 0) => LrSchedule::Constant,
            (ScheduleKind::Constant, w) => LrSchedule::ConstantWithWarmup { warmup_steps: w },
            (ScheduleKind::Linear, w) => LrSchedule::Linear { warmup_steps: w, total_steps: self.max_steps },
            (ScheduleKind::Cosine, w) => LrSchedule::cosine(w, self.max_steps),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidationConfig {
    /// Prompts of the grid rows (empty: the first four distinct captions of
    /// the data, or the instance prompt).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Seeds of the grid columns.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Write `samples/step-N.png` every N steps (0: only before and after training).
    #[serde(default = "hundred")]
    pub every: u64,
    /// Sampling steps (default: the model's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
}

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2, 3]
}
fn hundred() -> u64 {
    100
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self { prompts: Vec::new(), seeds: default_seeds(), every: 100, steps: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint every N steps (and always at the end).
    #[serde(default = "hundred")]
    pub every: u64,
    /// Complete checkpoints to keep.
    #[serde(default = "three")]
    pub keep_last: usize,
}

fn three() -> usize {
    3
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 100, keep_last: 3 }
    }
}

impl RunConfig {
    /// Read `path`, apply `--set` overrides (`section.key=value`, the value
    /// in TOML syntax, a bare word taken as a string) and resolve.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, path, overrides)
    }

    /// Parse TOML text (`origin` names it in errors), apply overrides, resolve.
    pub fn from_toml(text: &str, origin: &Path, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::config(origin, format!("invalid TOML: {e}")))?;
        for o in overrides {
            apply_override(&mut table, o).map_err(|msg| Error::config(origin, format!("--set {o}: {msg}")))?;
        }
        let cfg: RunConfig = table.try_into().map_err(|e: toml::de::Error| Error::config(origin, e.message().to_string()))?;
        cfg.resolve(origin)
    }

    /// Fill in defaults that depend on other fields, make paths absolute
    /// and check values that cannot work.
    fn resolve(mut self, origin: &Path) -> Result<Self> {
        let bad = |msg: String| Err(Error::config(origin, msg));
        self.objective.beta.get_or_insert(self.objective.kind.default_beta());
        absolute(&mut self.model.path)?;
        if let Some(p) = &mut self.lora.init_from {
            absolute(p)?;
        }
        match &mut self.data {
            DataConfig::Style { images, references_per_caption, .. } => {
                absolute(images)?;
                if *references_per_caption == 0 {
                    return bad("data.references-per-caption must be at least 1".into());
                }
            }
            DataConfig::Pairs { manifest, .. } => absolute(manifest)?,
            DataConfig::Concept { instance_dir, num_class_images, instance_prompt, class_prompt, .. } => {
                absolute(instance_dir)?;
                if *num_class_images == 0 {
                    return bad("data.num-class-images must be at least 1".into());
                }
                if instance_prompt.trim().is_empty() || class_prompt.trim().is_empty() {
                    return bad("data.instance-prompt and data.class-prompt must not be empty".into());
                }
            }
            DataConfig::Online { prompts, validation_prompts } => {
                absolute(prompts)?;
                if let Some(v) = validation_prompts {
                    absolute(v)?;
                }
            }
        }
        super::online::resolve_config(&mut self).map_err(|msg| Error::config(origin, msg))?;
        if !["f32", "f16", "bf16"].contains(&self.model.dtype.as_str()) {
            return bad(format!("model.dtype {:?}: expected f32, f16 or bf16", self.model.dtype));
        }
        if self.lora.rank == 0 || self.lora.text_encoder_rank == Some(0) {
            return bad("lora.rank and lora.text-encoder-rank must be at least 1".into());
        }
        if self.lora.text_encoder && self.lora.full.is_some() {
            return bad("lora.text-encoder trains text-encoder LoRA; it cannot be combined with lora.full".into());
        }
        let o = &self.optim;
        if o.batch_size == 0 || o.grad_accum == 0 || o.max_steps == 0 {
            return bad("optim.batch-size, optim.grad-accum and optim.max-steps must be at least 1".into());
        }
        if !(o.lr.is_finite() && o.lr >= 0.0) || o.grad_clip < 0.0 {
            return bad("optim.lr and optim.grad-clip must be finite and not negative".into());
        }
        if self.checkpoint.every == 0 || self.checkpoint.keep_last == 0 {
            return bad("checkpoint.every and checkpoint.keep-last must be at least 1".into());
        }
        if self.validation.seeds.is_empty() {
            return bad("validation.seeds must not be empty".into());
        }
        Ok(self)
    }

    /// The resolved config as TOML (what `--print-config` prints and the run
    /// directory stores).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::invalid(format!("cannot write the config as TOML: {e}")))
    }

    /// The config as the run directory saves and `--resume` compares it:
    /// without `model.device`.
    pub fn without_device(&self) -> Self {
        let mut c = self.clone();
        c.model.device = None;
        c
    }

    /// The device `model.device` names (the CPU when unset).
    pub fn device(&self) -> Result<candle_core::Device> {
        crate::pipeline::parse_device(self.model.device.as_deref().unwrap_or("cpu"))
    }

    /// The compute dtype.
    pub fn dtype(&self) -> candle_core::DType {
        match self.model.dtype.as_str() {
            "f16" => candle_core::DType::F16,
            "bf16" => candle_core::DType::BF16,
            _ => candle_core::DType::F32,
        }
    }
}

fn absolute(p: &mut PathBuf) -> Result<()> {
    if p.is_relative() {
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        *p = cwd.join(&*p);
    }
    Ok(())
}

/// Set `a.b.c = value` in `table`, creating tables on the way.
fn apply_override(table: &mut toml::Table, item: &str) -> std::result::Result<(), String> {
    let Some((key, raw)) = item.split_once('=') else {
        return Err("expected key=value".into());
    };
    let parts: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key {key:?}"));
    }
    // A TOML value (number, bool, string, array, inline table); anything
    // that does not parse as one is taken as a plain string.
    let value = match format!("v = {}", raw.trim()).parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.trim().into())),
        Err(_) => toml::Value::String(raw.trim().into()),
    };
    let (last, path) = parts.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in path {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("{p} is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\npath = \"/m\"\n[data]\nkind = \"style\"\nimages = \"/imgs\"\n";

    fn parse(text: &str, sets: &[&str]) -> Result<RunConfig> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml(text, Path::new("run.toml"), &sets)
    }

    #[test]
    fn defaults_are_the_official_settings() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!((c.lora.rank, c.lora.targets.as_str()), (16, "attn"));
        assert_eq!((c.optim.lr, c.optim.weight_decay, c.optim.grad_clip), (1e-5, 1e-6, 1.0));
        assert_eq!((c.objective.kind, c.objective.beta), (ObjectiveKind::Pso, Some(50.0)));
        assert!(matches!(c.data, DataConfig::Style { references_per_caption: 1, refresh_references_every: 0, .. }));
        // The resolved text reads back to the same config.
        let text = c.to_toml().unwrap();
        assert_eq!(parse(&text, &[]).unwrap(), c);
        assert!(text.contains("beta = 50.0") && text.contains("kind = \"style\""), "{text}");
    }

    #[test]
    fn overrides_take_toml_values_and_dotted_keys() {
        let c = parse(MINIMAL, &["optim.lr=2e-4", "objective.kind=sft", "validation.prompts=[\"a\", \"b\"]", "data.select.style=noto"]).unwrap();
        assert_eq!(c.optim.lr, 2e-4);
        assert_eq!(c.objective.kind, ObjectiveKind::Sft);
        assert_eq!(c.validation.prompts, ["a", "b"]);
        let DataConfig::Style { select, .. } = &c.data else { panic!() };
        assert_eq!(select["style"], "noto");
        let c = parse(MINIMAL, &["objective.kind=diffusion-dpo"]).unwrap();
        assert_eq!(c.objective.beta, Some(5000.0));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_file() {
        for (sets, want) in [
            (vec!["optim.learning-rate=1"], "learning-rate"),
            (vec!["data.instance-prompt=x"], "instance-prompt"),
            (vec!["objective.kind=ppo"], "ppo"),
            (vec!["optim.batch-size=0"], "batch-size"),
            (vec!["lora.rank=0"], "rank"),
            (vec!["optim"], "key=value"),
        ] {
            let e = parse(MINIMAL, &sets).unwrap_err().to_string();
            assert!(e.starts_with("run.toml: ") && e.contains(want), "{e}");
        }
        let e = parse("[model]\npath = \"/m\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("data"), "{e}");
    }

    #[test]
    fn text_encoder_lora_defaults_to_the_unet_settings() {
        let c = parse(MINIMAL, &["lora.text-encoder=true", "lora.rank=4"]).unwrap();
        assert_eq!(c.lora.text_encoder_settings(), (4, 16.0, "attn"));
        let c = parse(MINIMAL, &["lora.text-encoder=true", "lora.text-encoder-rank=2", "lora.text-encoder-targets=attn-ff"]).unwrap();
        assert_eq!(c.lora.text_encoder_settings(), (2, 16.0, "attn-ff"));
        assert!(c.to_toml().unwrap().contains("text-encoder = true"));
        assert!(!parse(MINIMAL, &[]).unwrap().to_toml().unwrap().contains("text-encoder"));
        assert!(parse(MINIMAL, &["lora.text-encoder-rank=0"]).is_err());
    }

    #[test]
    fn gradient_checkpointing_is_off_and_unwritten_by_default() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert!(!c.model.gradient_checkpointing);
        // Absent when off, so the resolved text of older runs is unchanged.
        assert!(!c.to_toml().unwrap().contains("gradient-checkpointing"));
        let c = parse(MINIMAL, &["model.gradient-checkpointing=true"]).unwrap();
        assert!(c.model.gradient_checkpointing);
        assert!(c.to_toml().unwrap().contains("gradient-checkpointing = true"));
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for name in ["style.toml", "pairs.toml", "concept.toml", "online.toml"] {
            let c = RunConfig::load(&dir.join(name), &[]).unwrap();
            assert!(c.model.path.ends_with("models/emoji"), "{name}");
        }
    }

    #[test]
    fn relative_paths_become_absolute() {
        let c = parse("[model]\npath = \"models/emoji\"\n[data]\nkind = \"pairs\"\nmanifest = \"p.jsonl\"\n", &[]).unwrap();
        assert!(c.model.path.is_absolute() && c.model.path.ends_with("models/emoji"));
        let DataConfig::Pairs { manifest, format } = &c.data else { panic!() };
        assert!(manifest.is_absolute());
        assert_eq!(PairsFormat::of(manifest, *format), PairsFormat::Jsonl);
        assert_eq!(PairsFormat::of(Path::new("train-0.PARQUET"), None), PairsFormat::Parquet);
        assert_eq!(PairsFormat::of(Path::new("pairs.data"), Some(PairsFormat::Parquet)), PairsFormat::Parquet);
    }
}
