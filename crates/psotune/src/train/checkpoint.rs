//! One checkpoint of a run: `step-000100/{weights.safetensors,
//! optimizer.safetensors, state.json}` (see [`super::RunDir`] for how it is
//! written). `state.json` holds everything else a bit-exact resume needs
//! (llm.c `write_checkpoint` keeps the same list): the step, every RNG
//! stream's position, the data cursor, and the hash of the resolved config.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::loss_scale::LossScale;
use super::optim::AdamW;
use crate::diffusion::NoiseRngState;
use crate::error::{Error, Result, WeightReport};
use crate::nn::weights::read_safetensors;

/// Bumped whenever the layout or `state.json` changes incompatibly.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";

/// The contents of `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps completed when the checkpoint was taken.
    pub step: u64,
    /// Every RNG stream of the run, by name (e.g. "noise", "timesteps").
    pub rng: BTreeMap<String, NoiseRngState>,
    /// Where the data pipeline continues; opaque to the checkpoint code.
    pub data_cursor: serde_json::Value,
    /// [`config_hash`] of the run's resolved `config.toml`.
    pub config_hash: String,
    /// The dynamic loss scale of an f16 run (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

/// What a caller hands to [`super::RunDir::save`].
pub struct CheckpointContents<'a> {
    pub step: u64,
    /// The trained tensors (adapters, or the full-fine-tuned groups).
    pub weights: &'a BTreeMap<String, Tensor>,
    pub optimizer: &'a AdamW,
    pub rng: BTreeMap<String, NoiseRngState>,
    pub data_cursor: serde_json::Value,
    /// The f16 run's loss scale after this step.
    pub loss_scale: Option<LossScale>,
}

/// A complete checkpoint found on disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub(super) dir: PathBuf,
    pub(super) state: TrainState,
}

impl Checkpoint {
    /// Read and check `dir/state.json` and that the tensor files exist.
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let state: TrainState = crate::error::read_json(&state_path)?;
        if state.format_version != CHECKPOINT_FORMAT_VERSION {
            let msg = format!("format_version {}, this psotune reads {CHECKPOINT_FORMAT_VERSION}", state.format_version);
            return Err(Error::Checkpoint { path: state_path, msg });
        }
        for f in [WEIGHTS_FILE, OPTIMIZER_FILE] {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(Error::Checkpoint { path: p, msg: "missing".into() });
            }
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), state })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    pub fn optimizer_path(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }

    /// The saved trained tensors, on the CPU.
    pub fn read_weights(&self) -> Result<HashMap<String, Tensor>> {
        read_safetensors(&self.weights_path())
    }

    /// Set every var to its saved value. Strict: the file must hold exactly
    /// these names with these shapes and dtypes (an error lists every
    /// offending key).
    pub fn restore_weights(&self, vars: &[(String, Var)]) -> Result<()> {
        let path = self.weights_path();
        let mut saved = self.read_weights()?;
        let mut report = WeightReport::default();
        let mut ok = Vec::new();
        for (name, var) in vars {
            match saved.remove(name) {
                None => report.missing.push(name.clone()),
                Some(t) if t.dims() != var.dims() || t.dtype() != var.dtype() => {
                    report.mismatched.push((name.clone(), t.dims().to_vec(), var.dims().to_vec()))
                }
                Some(t) => ok.push((var, t)),
            }
        }
        report.unused = saved.into_keys().collect();
        report.unused.sort();
        if !report.is_empty() {
            return Err(Error::Weights { path, report });
        }
        for (var, t) in ok {
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Load the saved moments into `optimizer` ([`AdamW::load`]).
    pub fn restore_optimizer(&self, optimizer: &mut AdamW) -> Result<()> {
        optimizer.load(&self.optimizer_path())
    }
}

/// The current values of `vars` as named tensors (for
/// [`CheckpointContents::weights`]).
pub fn vars_to_tensors(vars: &[(String, Var)]) -> BTreeMap<String, Tensor> {
    vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
}

/// A stable hash of the resolved config text (64-bit FNV-1a, hex): the same
/// text gives the same hash on every platform and Rust version, unlike
/// `std`'s `DefaultHasher`.
pub fn config_hash(config: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in config.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}
