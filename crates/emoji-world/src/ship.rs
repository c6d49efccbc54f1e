//! Stage `ship`: store OUT's weights (UNet, text encoder, VAE) as float16,
//! which halves the folder that the repository carries (46 -> 23 MB).
//! psotune converts them to the compute dtype on load (f32 on the CPU) and
//! diffusers does the same with `torch_dtype=torch.float32`; the report
//! stage measures the shipped weights. Idempotent: float16 files are left
//! alone.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use psotune::nn::weights::{read_safetensors, write_safetensors};

use crate::Ctx;

const FILES: [&str; 3] =
    ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"];

pub fn run(ctx: &Ctx) -> Result<()> {
    for file in FILES {
        let path = ctx.out.join(file);
        let n = to_f16(&path).with_context(|| path.display().to_string())?;
        eprintln!("ship: {} ({n} tensors converted to f16)", path.display());
    }
    Ok(())
}

/// Rewrite a safetensors file with every f32/f64 tensor as f16; returns
/// how many were converted (0: nothing written).
fn to_f16(path: &Path) -> Result<usize> {
    let tensors = read_safetensors(path)?;
    let mut converted = 0;
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t: Tensor = match t.dtype() {
            DType::F32 | DType::F64 => {
                converted += 1;
                t.to_dtype(DType::F16)?
            }
            _ => t,
        };
        out.insert(name, t);
    }
    if converted > 0 {
        write_safetensors(&out, path)?;
    }
    Ok(converted)
}
