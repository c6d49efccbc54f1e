//! transformers `CLIPModel`: both towers with their projections and
//! `logit_scale`, loaded from a folder holding `config.json` and
//! `model.safetensors` (or a sharded index) as `save_pretrained` writes them.
//! Keys: `text_model.*`, `text_projection.weight`, `vision_model.*`,
//! `visual_projection.weight`, `logit_scale`.

use std::path::Path;

use candle_core::{Device, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::model_config::ClipConfig;
use super::text_model::ClipTextModel;
use super::vision_model::ClipVisionTransformer;
use crate::error::Error;
use crate::nn::{Linear, Weights};

/// The image side of a `CLIPModel`: what `get_image_features` computes.
#[derive(Debug, Clone)]
pub struct ClipImageEncoder {
    pub vision_model: ClipVisionTransformer,
    pub visual_projection: Linear,
}

impl ClipImageEncoder {
    pub fn load(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        Ok(Self {
            vision_model: ClipVisionTransformer::load(vb.pp("vision_model"), &cfg.vision_config)?,
            visual_projection: Linear::load(vb.pp("visual_projection"), cfg.vision_config.hidden_size, cfg.projection_dim, false)?,
        })
    }

    /// pixel_values [B, 3, S, S] -> image embeddings [B, projection_dim] (not normalised).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.visual_projection.forward(&self.vision_model.forward(pixel_values)?)
    }

    /// Only the image tower of a `CLIPModel` folder (the aesthetic head sits
    /// on image embeddings alone). The text tower's tensors are left unread
    /// on purpose; any other missing, extra or mis-shaped key is an error.
    pub fn from_clip_dir(dir: &Path, device: &Device) -> crate::Result<(Self, ClipConfig)> {
        let cfg = ClipConfig::from_file(dir.join("config.json"))?;
        let weights = weights_of(dir, device)?;
        let enc = Self::load(weights.var_builder(), &cfg)?;
        let mut report = weights.report();
        report.unused.retain(|k| !(k.starts_with("text_model.") || k == "text_projection.weight" || k == "logit_scale"));
        if !report.is_empty() {
            return Err(Error::Weights { path: weights.source().to_path_buf(), report });
        }
        Ok((enc, cfg))
    }
}

/// `CLIPModel`.
#[derive(Debug, Clone)]
pub struct ClipModel {
    /// `text_model.*` and `text_projection` (a `CLIPTextModelWithProjection`).
    pub text: ClipTextModel,
    pub image: ClipImageEncoder,
    /// Log of the temperature the contrastive logits are multiplied by.
    pub logit_scale: Tensor,
    pub config: ClipConfig,
}

impl ClipModel {
    pub fn load(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        Ok(Self {
            text: ClipTextModel::load(vb.clone(), &cfg.text_config, true)?,
            image: ClipImageEncoder::load(vb.clone(), cfg)?,
            logit_scale: vb.get((), "logit_scale")?,
            config: cfg.clone(),
        })
    }

    /// Read `config.json` and the safetensors weights of a `CLIPModel`
    /// folder, strictly (every key used, every shape right).
    pub fn from_dir(dir: &Path, device: &Device) -> crate::Result<Self> {
        let cfg = ClipConfig::from_file(dir.join("config.json"))?;
        let weights = weights_of(dir, device)?;
        let model = Self::load(weights.var_builder(), &cfg)?;
        weights.finish()?;
        Ok(model)
    }

    /// `get_image_features`: [B, 3, S, S] -> [B, projection_dim].
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.image.forward(pixel_values)
    }

    /// `get_text_features`: input_ids [B, L] -> [B, projection_dim].
    pub fn text_embeds(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.text.forward(input_ids)?.pooled)
    }

    /// `logit_scale` as a number (PickScore multiplies by its exp).
    pub fn logit_scale(&self) -> Result<f32> {
        self.logit_scale.to_dtype(DType::F32)?.to_scalar::<f32>()
    }
}

/// A folder's safetensors weights (one file or a sharded index), as f32 on `device`.
fn weights_of(dir: &Path, device: &Device) -> crate::Result<Weights> {
    let files = crate::pipeline::folder::resolve_weights(dir, None)?;
    Weights::from_files(&files, DType::F32, device)
}
