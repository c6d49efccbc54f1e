//! Safetensors files with string metadata, written durably: the data is
//! synced to disk before the call returns, so a checkpoint directory renamed
//! into place afterwards never holds a half-written file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::nn::weights::read_safetensors;

/// Write `tensors` (sorted by name, so equal inputs give equal bytes) with
/// `metadata` to `path` and fsync it.
pub fn write_tensors_with_metadata(tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>, path: &Path) -> Result<()> {
    let meta = if metadata.is_empty() { None } else { Some(metadata) };
    // candle's `View` for Tensor copies to the CPU and cannot fail there.
    let cpu: BTreeMap<&String, Tensor> =
        tensors.iter().map(|(k, t)| Ok((k, t.to_device(&candle_core::Device::Cpu)?))).collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), meta)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
    write_durably(path, &bytes)
}

/// All tensors of `path` on the CPU, and its metadata (empty when none).
pub fn read_tensors_with_metadata(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let tensors = read_safetensors(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
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
