//! Parsing --device and --dtype.

use anyhow::{bail, Result};
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
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(rest) = s.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            Some(n) => n.parse()?,
            None if rest.is_empty() => 0,
            None => bail!("unknown --device {s:?} (expected cpu or cuda[:N])"),
        };
        return Ok(Device::new_cuda(ordinal)?);
    }
    bail!("unknown --device {s:?} (expected cpu or cuda[:N])")
}
