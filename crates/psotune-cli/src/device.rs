//! Parsing --device and --dtype.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => bail!("unknown --dtype {s:?} (expected f32, f16 or bf16)"),
    })
}

pub fn parse_device(s: &str) -> Result<Device> {
    psotune::pipeline::parse_device(s).context("--device")
}
