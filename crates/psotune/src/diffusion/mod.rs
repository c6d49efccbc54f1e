//! Noise schedules and samplers: pure math, separate from models.
//!
//! - [`SchedulerConfig`]: a diffusers `scheduler_config.json`, resolved.
//! - [`NoiseSchedule`]: alpha_bar / sigma per timestep, forward noising.
//! - [`Prediction`]: eps / x0 / v network outputs to (eps_hat, x0_hat).
//! - [`samplers`]: Euler-ancestral (Turbo), DMD2, LCM and DDIM, each exposing
//!   the Gaussian mean and std of every transition for PSO's log-probs.
//! - [`NoiseRng`]: seeded, resumable Gaussian noise.
//!
//! Numerics mirror diffusers 0.42 (module cited in each file); every formula
//! is tested against hand-computed values and numbers printed by diffusers.

mod config;
mod error;
mod noise;
mod prediction;
pub mod samplers;
mod schedule;
mod timesteps;

pub use config::{BetaSchedule, SchedulerConfig, TimestepSpacing};
pub use error::ScheduleError;
pub use noise::{randn, NoiseRng, NoiseRngState};
pub use prediction::Prediction;
pub use samplers::{
    build_sampler, gaussian_log_prob, Ddim, Dmd2, EulerAncestral, Lcm, Sampler, SamplerKind, StepOutput, Transition,
};
pub use schedule::{betas, timesteps_of, NoiseSchedule};
pub use timesteps::{spaced, Timesteps};
