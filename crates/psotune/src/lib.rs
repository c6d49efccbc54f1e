//! psotune: tune timestep-distilled diffusion models with Pairwise Sample
//! Optimization. The library holds everything a user could embed: the
//! diffusers-compatible model stack, the diffusion math and the pipelines;
//! the `psotune` binary is a thin layer over it.

pub mod data;
pub mod demo;
pub mod diffusion;
pub mod export;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod objectives;
pub mod ops;
pub mod pipeline;
pub mod reward;
pub mod scratch;
pub mod threads;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
pub use ops::simd;
