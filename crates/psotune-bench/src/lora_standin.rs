//! TEMPORARY STAND-IN for psotune's LoRA (branch `lora`, not merged when this
//! benchmark was written): to be replaced by `psotune::nn` LoRA layers.
//!
//! LoRA (Hu et al. 2021; peft `lora.Linear`) on the attention projections
//! `to_q`, `to_k`, `to_v`, `to_out.0`: W' = W + (alpha / r) B A with the base W
//! frozen, A [r, in] and B [out, r] trained, B starting at zero (peft's
//! default; A here ~ N(0, 1/r), peft's `init_lora_weights="gaussian"`).
//!
//! psotune's `Linear` has no LoRA hook yet, so instead of peft's extra
//! low-rank matmuls x A^T B^T this stand-in *merges* before every step: it
//! replaces each projection's weight by the graph tensor W + s B A. Same
//! function and gradients for A and B; the cost differs slightly: the merge
//! (out x r x in per site, small) and candle then forms the full weight
//! gradient of each merged projection (~ one extra forward matmul per site),
//! where peft only forms x A^T and its gradients.

use candle_core::{DType, Device, Result, Tensor, Var};
use psotune::models::unet::{Attention, UNet2DConditionModel};
use psotune::nn::Linear;

struct Site {
    base: Tensor,
    /// A, [r, in]
    down: Var,
    /// B, [out, r]
    up: Var,
}

pub struct MergedLora {
    sites: Vec<Site>,
    scale: f64,
}

/// Every LoRA target of the UNet, in a fixed order (down, mid, up blocks).
fn targets(unet: &mut UNet2DConditionModel) -> Vec<&mut Linear> {
    // The three block lists are disjoint fields, borrowed side by side.
    let UNet2DConditionModel { down_blocks, mid_block, up_blocks, .. } = unet;
    let transformers = down_blocks
        .iter_mut()
        .flat_map(|b| b.attentions.iter_mut())
        .chain(mid_block.iter_mut().flat_map(|m| m.attentions.iter_mut()))
        .chain(up_blocks.iter_mut().flat_map(|b| b.attentions.iter_mut()));
    transformers
        .flat_map(|t| t.transformer_blocks.iter_mut())
        .flat_map(|b| [&mut b.attn1, &mut b.attn2])
        .flat_map(|a: &mut Attention| [&mut a.to_q, &mut a.to_k, &mut a.to_v, &mut a.to_out])
        .collect()
}

impl MergedLora {
    /// Adapters of rank `rank` (alpha = rank, so scale 1) on every attention
    /// projection of `unet`, whose weights must be plain (frozen) tensors.
    pub fn new(unet: &mut UNet2DConditionModel, rank: usize, device: &Device) -> Result<Self> {
        let mut sites = Vec::new();
        for (i, lin) in targets(unet).into_iter().enumerate() {
            let (out, inp) = lin.weight.dims2()?;
            let a = psotune::diffusion::randn((rank, inp), 1000 + i as u64, DType::F32, device)?.affine(1.0 / rank as f64, 0.0)?;
            let b = Tensor::zeros((out, rank), DType::F32, device)?;
            sites.push(Site { base: lin.weight.detach(), down: Var::from_tensor(&a)?, up: Var::from_tensor(&b)? });
        }
        Ok(Self { sites, scale: 1.0 })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.sites.iter().flat_map(|s| [s.down.clone(), s.up.clone()]).collect()
    }

    /// Re-merge the current A, B into the UNet (call before every forward).
    pub fn apply(&self, unet: &mut UNet2DConditionModel) -> Result<()> {
        for (site, lin) in self.sites.iter().zip(targets(unet)) {
            let delta = site.up.as_tensor().matmul(site.down.as_tensor())?;
            lin.weight = (&site.base + delta.affine(self.scale, 0.0)?)?;
        }
        Ok(())
    }
}
