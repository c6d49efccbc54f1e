//! Training machinery: an AdamW whose state is saved, learning-rate
//! schedules, gradients keyed by name (accumulation, clipping by global
//! norm), and run directories with atomic checkpoints for bit-exact resume.
//!
//! ```text
//! let run = RunDir::open(dir, &config_text)?.keep_last(3);
//! let mut opt = AdamW::new(weights.vars(), AdamWConfig::default())?;
//! if let Some(ck) = run.latest()? {            // resume
//!     ck.restore_weights(opt.params())?;
//!     ck.restore_optimizer(&mut opt)?;
//!     step = ck.step(); rng = NoiseRng::from_state(ck.state().rng["noise"]); ...
//! }
//! loop {
//!     let mut acc = GradAccumulator::new();
//!     for micro in batches { acc.add_store(&loss(micro)?.backward()?, opt.params())?; }
//!     let mut grads = acc.finish()?;
//!     grads.clip_global_norm(1.0)?;
//!     opt.set_lr(schedule.lr(base_lr, step));
//!     opt.step(&grads)?;
//!     step += 1;
//!     if step % every == 0 { run.save(&CheckpointContents { .. })?; }
//! }
//! ```

mod adamw_kernel;
mod checkpoint;
mod grads;
mod loss_scale;
mod optim;
mod run_dir;
mod schedule;
mod tensors_io;

#[cfg(test)]
mod tests;

pub use checkpoint::{
    config_hash, vars_to_tensors, Checkpoint, CheckpointContents, TrainState, CHECKPOINT_FORMAT_VERSION, OPTIMIZER_FILE,
    STATE_FILE, WEIGHTS_FILE,
};
pub use grads::{GradAccumulator, Grads};
pub use loss_scale::{LossScale, ScaledStep};
pub use optim::{AdamW, AdamWConfig};
pub use run_dir::{RunDir, WriteStage, CHECKPOINTS_DIR, CONFIG_FILE};
pub use schedule::LrSchedule;
