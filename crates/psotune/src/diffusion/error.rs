//! Typed errors for schedules and timestep requests that cannot work.

/// Why a noise schedule or a sampler's timesteps could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the number of sampling steps must be at least 1")]
    ZeroSteps,

    #[error("{steps} sampling steps requested, but at most {max} are possible here")]
    TooManySteps { steps: usize, max: usize },

    #[error("the explicit timestep list is empty")]
    EmptyTimesteps,

    #[error("timestep {t} (position {index}) is outside [0, {max}]")]
    TimestepOutOfRange { index: usize, t: f64, max: usize },

    #[error("timesteps must strictly decrease, but position {index} has {t} after {prev}")]
    NotDecreasing { index: usize, prev: f64, t: f64 },

    #[error("timestep {t} (position {index}) must be an integer for this sampler")]
    NotInteger { index: usize, t: f64 },

    /// Betas or training-timestep settings that do not define a diffusion.
    #[error("invalid noise schedule: {0}")]
    InvalidSchedule(String),

    /// A scheduler option diffusers has but psotune does not implement.
    #[error("unsupported scheduler option: {0}")]
    Unsupported(String),
}
