//! Safetensors files with string metadata, written durably: the data is
//! synced to disk before the call returns, so a checkpoint directory renamed
//! into place afterwards never holds a half-written file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The one metadata key psotune writes. safetensors keeps metadata in a
/// `HashMap`, whose order (and so the file's bytes) would change from process
/// to process with several keys; one key holding a JSON object with sorted
/// fields makes equal inputs give equal bytes, which the resume test checks.
pub const METADATA_KEY: &str = "psotune";

/// Write `tensors` (sorted by name) with `metadata` (a JSON value stored under
/// [`METADATA_KEY`]) to `path` and fsync it. Equal inputs give equal bytes.
pub fn write_tensors_with_metadata(tensors: &BTreeMap<String, Tensor>, metadata: Option<&serde_json::Value>, path: &Path) -> Result<()> {
    let meta = match metadata {
        None => None,
        Some(v) => {
            let text = serde_json::to_string(v).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
            Some(HashMap::from([(METADATA_KEY.to_string(), text)]))
        }
    };
    // candle's `View` for Tensor copies to the CPU and cannot fail there.
    let cpu: BTreeMap<&String, Tensor> =
        tensors.iter().map(|(k, t)| Ok((k, t.to_device(&candle_core::Device::Cpu)?))).collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), meta)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
    write_durably(path, &bytes)
}

/// All tensors of `path` on the CPU, and the JSON under [`METADATA_KEY`]
/// (None when absent).
pub fn read_tensors_with_metadata(path: &Path) -> Result<(HashMap<String, Tensor>, Option<serde_json::Value>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Safetensors { path: path.to_path_buf(), msg };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let value = match meta.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) {
        None => None,
        Some(text) => Some(serde_json::from_str(text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?),
    };
    Ok((tensors, value))
}

/// Create `path` with `bytes` and fsync it.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| Error::io(path, e);
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// fsync a directory so a rename or removal in it is on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}
