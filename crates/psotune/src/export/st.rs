//! safetensors with header metadata (candle's writer has none, and
//! diffusers keeps the LoRA config there).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::nn::weights::read_safetensors;

/// Tensors by name, and the header's `__metadata__` string map.
pub(crate) type TensorsAndMetadata = (HashMap<String, Tensor>, Option<HashMap<String, String>>);

pub(crate) fn read_with_metadata(path: &Path) -> Result<TensorsAndMetadata> {
    let tensors = read_safetensors(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok((tensors, meta.metadata().clone()))
}

/// Write `tensors` (sorted by name, contiguous) with `metadata`, through a
/// temporary file renamed into place.
pub(crate) fn write_with_metadata(path: &Path, tensors: &HashMap<String, Tensor>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut items: Vec<(String, Tensor)> =
        tensors.iter().map(|(k, t)| Ok((k.clone(), t.contiguous()?))).collect::<candle_core::Result<_>>()?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(items, metadata, &tmp)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
