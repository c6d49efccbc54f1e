//! `psotune label`: sample pairs from a model, let people choose the better
//! image in the browser, and write their choices as the pairs manifest that
//! `[data] kind = "pairs"` reads.
//!
//! The pieces: [`plan`] fixes which pairs exist (prompt, two seeds) so that
//! a restart regenerates the same ones; [`store`] keeps every choice on disk
//! (appended and fsynced before the browser hears back); [`board`] decides
//! which pair each browser tab sees next; [`server`] is the HTTP side and
//! the page; [`stats`] measures agreement between labellers.

pub mod board;
pub mod plan;
pub mod render;
pub mod server;
pub mod stats;
pub mod store;
mod time;

use std::path::PathBuf;

pub use board::Board;
pub use plan::{PairSpec, Plan};
pub use render::{PipelineRender, Render};
pub use server::{serve, App, ServeOptions};
pub use stats::Agreement;
pub use store::{Label, Store, Verdict};

/// Errors of the labelling tool; each names the file, line or field that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Line { path: PathBuf, line: usize, msg: String },
    #[error("{path}: {msg}")]
    Session { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Model(#[from] psotune::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
