//! A run directory and its checkpoints:
//!
//! ```text
//! run/config.toml                     the resolved config (text, hashed)
//! run/checkpoints/step-000100/        complete checkpoints, see checkpoint.rs
//! run/checkpoints/.tmp-step-000200/   a checkpoint being written
//! run/checkpoints/.del-step-000050/   a checkpoint being removed
//! ```
//!
//! A checkpoint is written into `.tmp-step-N` (every file fsynced,
//! `state.json` last), then renamed to `step-N` in one atomic rename, so a
//! `step-N` directory is always complete; older checkpoints are removed only
//! after that, by first renaming them to `.del-step-N`. A process killed at
//! any point therefore leaves the newest complete checkpoint in place plus,
//! at most, leftovers with a dot name that [`RunDir::latest`] removes.
//! One process writes a run directory at a time.

use std::path::{Path, PathBuf};

use super::checkpoint::{config_hash, Checkpoint, CheckpointContents, TrainState, CHECKPOINT_FORMAT_VERSION};
use super::checkpoint::{OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE};
use super::tensors_io::{sync_dir, write_durably, write_tensors_with_metadata};
use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "config.toml";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const TMP_PREFIX: &str = ".tmp-";
const DEL_PREFIX: &str = ".del-";

/// Where [`RunDir::save`] is, for fault-injection tests (a test hook that
/// sleeps or kills the process at one of these points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage {
    /// One file of the temporary checkpoint directory is written and synced.
    Wrote(&'static str),
    /// The checkpoint is complete under its final name.
    Renamed,
    /// Retention is about to remove the checkpoint of this step.
    Removing(u64),
}

type WriteHook = Box<dyn Fn(u64, WriteStage) + Send + Sync>;

pub struct RunDir {
    root: PathBuf,
    config_hash: String,
    keep_last: usize,
    hook: Option<WriteHook>,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

impl RunDir {
    /// Open the run directory `root` for the resolved `config`: a new run
    /// writes `config.toml`; an existing one must hold the same text (a
    /// changed config would make its checkpoints resume a different run).
    /// Keeps the last 3 checkpoints unless [`RunDir::keep_last`] says otherwise.
    pub fn open(root: &Path, config: &str) -> Result<Self> {
        let ckpts = root.join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(&ckpts).map_err(|e| Error::io(&ckpts, e))?;
        let cfg_path = root.join(CONFIG_FILE);
        match std::fs::read_to_string(&cfg_path) {
            Ok(existing) if existing == config => {}
            Ok(_) => {
                let msg = "the run directory was made with a different config; use a new run directory".to_string();
                return Err(Error::Checkpoint { path: cfg_path, msg });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Same write-then-rename as checkpoints: never a half config.
                let tmp = root.join(format!("{TMP_PREFIX}{CONFIG_FILE}"));
                write_durably(&tmp, config.as_bytes())?;
                std::fs::rename(&tmp, &cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
                sync_dir(root)?;
            }
            Err(e) => return Err(Error::io(&cfg_path, e)),
        }
        Ok(RunDir { root: root.to_path_buf(), config_hash: config_hash(config), keep_last: 3, hook: None })
    }

    /// Keep the newest `n` complete checkpoints (at least 1).
    pub fn keep_last(mut self, n: usize) -> Self {
        self.keep_last = n.max(1);
        self
    }

    /// Call `hook(step, stage)` at each stage of [`RunDir::save`] (tests).
    pub fn set_write_hook(&mut self, hook: impl Fn(u64, WriteStage) + Send + Sync + 'static) {
        self.hook = Some(Box::new(hook));
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    fn stage(&self, step: u64, stage: WriteStage) {
        if let Some(h) = &self.hook {
            h(step, stage)
        }
    }

    /// Write a checkpoint (temporary directory, then rename), then apply
    /// keep-last-N retention. Returns the new checkpoint.
    pub fn save(&self, c: &CheckpointContents) -> Result<Checkpoint> {
        let dir = self.checkpoints_dir();
        let name = step_dir_name(c.step);
        let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
        remove_dir_if_exists(&tmp)?;
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;

        write_tensors_with_metadata(c.weights, None, &tmp.join(WEIGHTS_FILE))?;
        self.stage(c.step, WriteStage::Wrote(WEIGHTS_FILE));
        c.optimizer.save(&tmp.join(OPTIMIZER_FILE))?;
        self.stage(c.step, WriteStage::Wrote(OPTIMIZER_FILE));
        let state = TrainState {
            format_version: CHECKPOINT_FORMAT_VERSION,
            step: c.step,
            rng: c.rng.clone(),
            data_cursor: c.data_cursor.clone(),
            config_hash: self.config_hash.clone(),
            loss_scale: c.loss_scale,
        };
        let state_path = tmp.join(STATE_FILE);
        let json = serde_json::to_string_pretty(&state).map_err(|source| Error::Json { path: state_path.clone(), source })?;
        write_durably(&state_path, json.as_bytes())?;
        self.stage(c.step, WriteStage::Wrote(STATE_FILE));
        sync_dir(&tmp)?;

        let final_dir = dir.join(&name);
        if final_dir.exists() {
            // Re-saving a step (a resume from an older checkpoint): retire
            // the old copy the same way retention does.
            self.remove_checkpoint(c.step)?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(&dir)?;
        self.stage(c.step, WriteStage::Renamed);

        let complete = self.checkpoints()?;
        let excess = complete.len().saturating_sub(self.keep_last);
        for old in complete.iter().take(excess).filter(|ck| ck.step() != c.step) {
            self.stage(c.step, WriteStage::Removing(old.step()));
            self.remove_checkpoint(old.step())?;
        }
        Checkpoint::open(&final_dir)
    }

    /// Rename `step-N` out of the way (atomic), then delete it.
    fn remove_checkpoint(&self, step: u64) -> Result<()> {
        let dir = self.checkpoints_dir();
        let from = dir.join(step_dir_name(step));
        let doomed = dir.join(format!("{DEL_PREFIX}{}", step_dir_name(step)));
        remove_dir_if_exists(&doomed)?;
        std::fs::rename(&from, &doomed).map_err(|e| Error::io(&from, e))?;
        sync_dir(&dir)?;
        remove_dir_if_exists(&doomed)
    }

    /// Every complete checkpoint, oldest first. Removes the leftovers of
    /// interrupted writes and removals. A `step-N` directory that is not a
    /// valid checkpoint of this run is an error naming the file, not skipped:
    /// the write protocol never leaves one, so something else damaged it.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let dir = self.checkpoints_dir();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) || name.starts_with(DEL_PREFIX) {
                remove_dir_if_exists(&entry.path())?;
                continue;
            }
            let Some(step) = parse_step_dir(&name) else { continue };
            let ck = Checkpoint::open(&entry.path())?;
            let state_path = entry.path().join(STATE_FILE);
            if ck.step() != step {
                let msg = format!("says step {} but the directory is {name}", ck.step());
                return Err(Error::Checkpoint { path: state_path, msg });
            }
            if ck.state().config_hash != self.config_hash {
                let msg = format!("config hash {} differs from the run's {}", ck.state().config_hash, self.config_hash);
                return Err(Error::Checkpoint { path: state_path, msg });
            }
            found.push(ck);
        }
        found.sort_by_key(|c| c.step());
        Ok(found)
    }

    /// The newest complete checkpoint, if any (see [`RunDir::checkpoints`]).
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoints()?.pop())
    }
}

fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
