//! open_clip's `CLIP` (open_clip/model.py and transformer.py, 3.3.0) with
//! the plain `VisionTransformer` and text transformer: the layout of
//! HPSv2's ViT-H-14 checkpoint.
//!
//! Keys: `visual.{conv1, class_embedding, positional_embedding, ln_pre,
//! transformer.resblocks.N, ln_post, proj}`; the text tower at the root
//! (`token_embedding, positional_embedding, transformer.resblocks.N,
//! ln_final, text_projection`), or under `text.` for open_clip's
//! `CustomTextCLIP`; `logit_scale`.
//!
//! A `ResidualAttentionBlock` (`ln_1, attn, ln_2, mlp.{c_fc, c_proj}`) is
//! the same pre-norm block as transformers' `CLIPEncoderLayer`, so it is
//! built as one: `attn.in_proj_weight` / `in_proj_bias` (q, k, v stacked,
//! as `torch.nn.MultiheadAttention` keeps them) are split into the three
//! projections, which is exact.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::OpenClipConfig;
use crate::models::clip::{causal_mask, ClipActivation, ClipAttention, ClipEncoderLayer, ClipMlp, Embedding};
use crate::nn::{Conv2d, LayerNorm, Linear, Weights};

/// `torch.nn.LayerNorm`'s default, which open_clip keeps.
const LN_EPS: f64 = 1e-5;

/// One `ResidualAttentionBlock`.
fn resblock(vb: VarBuilder, width: usize, heads: usize, mlp_width: usize, act: ClipActivation) -> Result<ClipEncoderLayer> {
    let attn = vb.pp("attn");
    let w = attn.get((3 * width, width), "in_proj_weight")?;
    let b = attn.get(3 * width, "in_proj_bias")?;
    let part = |i: usize| -> Result<Linear> { Ok(Linear::new(w.narrow(0, i * width, width)?, Some(b.narrow(0, i * width, width)?))) };
    let self_attn = ClipAttention {
        q_proj: part(0)?,
        k_proj: part(1)?,
        v_proj: part(2)?,
        out_proj: Linear::load(attn.pp("out_proj"), width, width, true)?,
        num_heads: heads,
        head_dim: width / heads,
    };
    let mlp = ClipMlp {
        fc1: Linear::load(vb.pp("mlp").pp("c_fc"), width, mlp_width, true)?,
        fc2: Linear::load(vb.pp("mlp").pp("c_proj"), mlp_width, width, true)?,
        activation: act,
    };
    Ok(ClipEncoderLayer {
        self_attn,
        layer_norm1: LayerNorm::load(vb.pp("ln_1"), width, LN_EPS)?,
        mlp,
        layer_norm2: LayerNorm::load(vb.pp("ln_2"), width, LN_EPS)?,
    })
}

fn resblocks(vb: VarBuilder, n: usize, width: usize, heads: usize, mlp_width: usize, act: ClipActivation) -> Result<Vec<ClipEncoderLayer>> {
    let vb = vb.pp("transformer").pp("resblocks");
    (0..n).map(|i| resblock(vb.pp(i), width, heads, mlp_width, act)).collect()
}

/// `VisionTransformer` (`visual.`).
#[derive(Debug, Clone)]
pub struct OpenClipVisual {
    pub conv1: Conv2d,
    pub class_embedding: Tensor,
    pub positional_embedding: Tensor,
    pub ln_pre: LayerNorm,
    pub resblocks: Vec<ClipEncoderLayer>,
    pub ln_post: LayerNorm,
    /// [width, embed_dim], applied as `x @ proj`.
    pub proj: Tensor,
    pub image_size: usize,
}

impl OpenClipVisual {
    pub fn load(vb: VarBuilder, cfg: &OpenClipConfig, act: ClipActivation) -> Result<Self> {
        let v = &cfg.vision;
        let (w, p) = (v.width, v.patch_size);
        Ok(Self {
            conv1: Conv2d::new(vb.pp("conv1").get((w, 3, p, p), "weight")?, None, p, 0),
            class_embedding: vb.get(w, "class_embedding")?,
            positional_embedding: vb.get((v.grid() * v.grid() + 1, w), "positional_embedding")?,
            ln_pre: LayerNorm::load(vb.pp("ln_pre"), w, LN_EPS)?,
            resblocks: resblocks(vb.clone(), v.layers, w, v.heads(), v.mlp_width(), act)?,
            ln_post: LayerNorm::load(vb.pp("ln_post"), w, LN_EPS)?,
            proj: vb.get((w, cfg.embed_dim), "proj")?,
            image_size: v.image_size,
        })
    }

    /// pixel_values [B, 3, S, S] -> image features [B, embed_dim] (not normalised).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let s = self.image_size;
        if (c, h, w) != (3, s, s) {
            candle_core::bail!("the open_clip vision tower takes [B, 3, {s}, {s}] pixel values, got {:?}", pixel_values.dims());
        }
        let x = self.conv1.forward(pixel_values)?; // [B, width, g, g]
        let width = x.dim(1)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let class = self.class_embedding.reshape((1, 1, width))?.broadcast_as((b, 1, width))?;
        let mut x = self.ln_pre.forward(&Tensor::cat(&[&class, &x], 1)?.broadcast_add(&self.positional_embedding)?)?;
        for blk in &self.resblocks {
            x = blk.forward(&x, None)?;
        }
        // `pool_type = "tok"`: the class token; ln_post is per token, so
        // normalising before or after taking it is the same.
        let pooled = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        pooled.matmul(&self.proj)
    }
}

/// The text transformer (root keys, or `text.` for `CustomTextCLIP`).
#[derive(Debug, Clone)]
pub struct OpenClipText {
    pub token_embedding: Embedding,
    pub positional_embedding: Tensor,
    pub resblocks: Vec<ClipEncoderLayer>,
    pub ln_final: LayerNorm,
    /// [width, embed_dim], applied as `x @ text_projection`.
    pub text_projection: Tensor,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl OpenClipText {
    pub fn load(vb: VarBuilder, cfg: &OpenClipConfig, act: ClipActivation) -> Result<Self> {
        let t = &cfg.text;
        Ok(Self {
            token_embedding: Embedding::load(vb.pp("token_embedding"), t.vocab_size, t.width)?,
            positional_embedding: vb.get((t.context_length, t.width), "positional_embedding")?,
            resblocks: resblocks(vb.clone(), t.layers, t.width, t.heads, t.mlp_width(), act)?,
            ln_final: LayerNorm::load(vb.pp("ln_final"), t.width, LN_EPS)?,
            text_projection: vb.get((t.width, cfg.embed_dim), "text_projection")?,
            context_length: t.context_length,
            vocab_size: t.vocab_size,
        })
    }

    /// input_ids [B, L] (L <= context_length) -> text features [B, embed_dim]
    /// (not normalised), pooled at each row's largest id (`pool_type =
    /// "argmax"`: the eot, CLIP's largest id; the first one on ties, as
    /// torch's argmax).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if b == 0 || l == 0 || l > self.context_length {
            candle_core::bail!("input_ids must be [B, L] with 0 < L <= {}, got {:?}", self.context_length, input_ids.dims());
        }
        let host: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
        if let Some(bad) = host.iter().flatten().find(|&&id| id < 0 || id >= self.vocab_size as i64) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {}", self.vocab_size);
        }
        let device = self.positional_embedding.device();
        let ids = input_ids.to_dtype(DType::U32)?.to_device(device)?;
        let mut x = self.token_embedding.forward(&ids)?.broadcast_add(&self.positional_embedding.narrow(0, 0, l)?)?;
        let mask = causal_mask(l, device)?;
        for blk in &self.resblocks {
            x = blk.forward(&x, Some(&mask))?;
        }
        let x = self.ln_final.forward(&x)?;
        let rows: Vec<u32> = host
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let pos = row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
                (i * l + pos) as u32
            })
            .collect();
        let pooled = x.reshape((b * l, ()))?.index_select(&Tensor::from_vec(rows, b, device)?, 0)?;
        pooled.matmul(&self.text_projection)
    }
}

/// open_clip `CLIP`.
#[derive(Debug, Clone)]
pub struct OpenClipModel {
    pub visual: OpenClipVisual,
    pub text: OpenClipText,
    pub logit_scale: Tensor,
    pub config: OpenClipConfig,
}

impl OpenClipModel {
    pub fn load(vb: VarBuilder, cfg: &OpenClipConfig) -> Result<Self> {
        let act = if cfg.quick_gelu { ClipActivation::QuickGelu } else { ClipActivation::Gelu };
        let text_vb = if vb.contains_tensor("text.token_embedding.weight") { vb.pp("text") } else { vb.clone() };
        Ok(Self {
            visual: OpenClipVisual::load(vb.pp("visual"), cfg, act)?,
            text: OpenClipText::load(text_vb, cfg, act)?,
            logit_scale: vb.get((), "logit_scale")?,
            config: cfg.clone(),
        })
    }

    /// Read a safetensors state dict strictly.
    pub fn from_file(weights: &Path, cfg: &OpenClipConfig, device: &Device) -> crate::Result<Self> {
        let w = Weights::from_files(&[weights.to_path_buf()], DType::F32, device)?;
        let model = Self::load(w.var_builder(), cfg)?;
        w.finish()?;
        Ok(model)
    }

    /// `encode_image(normalize=False)`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.visual.forward(pixel_values)
    }

    /// `encode_text(normalize=False)`.
    pub fn text_embeds(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.text.forward(input_ids)
    }
}
