//! Typed errors of the library. Every variant names the file, key, shape or
//! line that is wrong, so the CLI can print it as is.

use std::path::PathBuf;

/// Problems found while matching a checkpoint against a model.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WeightReport {
    /// Keys the model needs that the file lacks.
    pub missing: Vec<String>,
    /// Keys in the file that the model never asked for.
    pub unused: Vec<String>,
    /// (key, shape in file, shape the model expects).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl WeightReport {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for WeightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("{} missing: {}", self.missing.len(), self.missing.join(", ")));
        }
        if !self.unused.is_empty() {
            parts.push(format!("{} unused: {}", self.unused.len(), self.unused.join(", ")));
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|(k, got, want)| format!("{k} (file {got:?}, model {want:?})"))
                .collect();
            parts.push(format!("{} mis-shaped: {}", m.len(), m.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },

    /// A config file parsed but holds something we cannot build.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// The folder is not a diffusers model folder we understand.
    #[error("{path}: {msg}")]
    ModelFolder { path: PathBuf, msg: String },

    #[error("{path}: cannot read safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("weights in {path} do not match the model: {report}")]
    Weights { path: PathBuf, report: WeightReport },

    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },

    /// A dataset entry that cannot be used: the file (and line, for
    /// manifests such as `metadata.jsonl`) and what is wrong with it.
    #[error("{}: {msg}", fmt_at(.path, *.line))]
    Data { path: PathBuf, line: Option<usize>, msg: String },

    /// A run directory or checkpoint that is incomplete, corrupt or belongs
    /// to another run (train::RunDir, train::AdamW::load).
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// A caller passed arguments that cannot work (shapes, step counts, ...).
    #[error("{0}")]
    Invalid(String),

    /// A noise schedule or timestep request that cannot work (0 steps, timesteps
    /// out of range or not decreasing, ...).
    #[error(transparent)]
    Schedule(#[from] crate::diffusion::ScheduleError),

    /// A reward scorer failed or cannot be built (crate::reward).
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn fmt_at(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub fn data(path: impl Into<PathBuf>, line: Option<usize>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), line, msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Read a JSON file into a typed value, with the path in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}
