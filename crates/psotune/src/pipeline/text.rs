//! Prompt encoding as diffusers' pipelines do it (`encode_prompt` of
//! StableDiffusionPipeline and StableDiffusionXLPipeline, clip_skip unset).

use candle_core::{DType, Device, Tensor};

use super::folder::Family;
use super::load::TextEncoder;
use crate::error::{Error, Result};

/// What the UNet is conditioned on.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// [B, 77, cross_attention_dim]
    pub hidden: Tensor,
    /// SDXL: the pooled projection of the second encoder, [B, projection_dim].
    pub pooled: Option<Tensor>,
}

impl PromptEmbeds {
    pub fn zeros_like(&self) -> Result<Self> {
        Ok(Self { hidden: self.hidden.zeros_like()?, pooled: self.pooled.as_ref().map(|p| p.zeros_like()).transpose()? })
    }

    /// Stack two conditionings along the batch (unconditional first, as
    /// diffusers orders classifier-free guidance batches).
    pub fn cat(a: &Self, b: &Self) -> Result<Self> {
        let hidden = Tensor::cat(&[&a.hidden, &b.hidden], 0)?;
        let pooled = match (&a.pooled, &b.pooled) {
            (Some(x), Some(y)) => Some(Tensor::cat(&[x, y], 0)?),
            _ => None,
        };
        Ok(Self { hidden, pooled })
    }

    pub fn batch(&self) -> Result<usize> {
        Ok(self.hidden.dim(0)?)
    }
}

fn token_ids(enc: &TextEncoder, prompts: &[&str], device: &Device) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(prompts.len());
    for p in prompts {
        rows.push(Tensor::new(enc.tokenizer.encode(p)?.as_slice(), device)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// Encode prompts for the given family.
/// - SD 1.x/2.x: the last hidden state of the (only) encoder, after its final
///   layer norm.
/// - SDXL: the penultimate hidden states of both encoders, concatenated on
///   the feature dim; pooled = the second encoder's projected `text_embeds`.
pub fn encode_prompts(
    family: Family,
    encoders: &[TextEncoder],
    prompts: &[&str],
    dtype: DType,
    device: &Device,
) -> Result<PromptEmbeds> {
    let Some(first) = encoders.first() else {
        return Err(Error::invalid("no text encoder loaded"));
    };
    match family {
        Family::Sd => {
            let out = first.model.forward(&token_ids(first, prompts, device)?)?;
            Ok(PromptEmbeds { hidden: out.last_hidden_state.to_dtype(dtype)?, pooled: None })
        }
        Family::Sdxl => {
            if encoders.len() != 2 {
                return Err(Error::invalid(format!("SDXL needs two text encoders, {} loaded", encoders.len())));
            }
            let mut hidden = Vec::with_capacity(2);
            let mut pooled = None;
            for enc in encoders {
                let out = enc.model.forward(&token_ids(enc, prompts, device)?)?;
                hidden.push(out.penultimate.to_dtype(dtype)?);
                pooled = Some(out.pooled.to_dtype(dtype)?);
            }
            Ok(PromptEmbeds { hidden: Tensor::cat(&hidden, candle_core::D::Minus1)?, pooled })
        }
    }
}
