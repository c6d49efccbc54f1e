//! transformers' CLIP vision tower (`CLIPVisionTransformer`,
//! models/clip/modeling_clip.py, transformers 5.24): patch embedding with a
//! class token and learned positions, `pre_layrnorm` (sic, the checkpoint's
//! spelling), the same encoder layers as the text tower without a mask, and
//! `post_layernorm` on the class token.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::model_config::ClipVisionConfig;
use super::text_model::{ClipEncoder, Embedding};
use crate::nn::{Conv2d, LayerNorm};

/// `CLIPVisionEmbeddings`: non-overlapping patches (a bias-free convolution
/// with stride = kernel), a learned class token in front, learned absolute
/// positions added.
#[derive(Debug, Clone)]
pub struct ClipVisionEmbeddings {
    pub class_embedding: Tensor,
    pub patch_embedding: Conv2d,
    pub position_embedding: Embedding,
}

impl ClipVisionEmbeddings {
    pub fn load(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        // As on the text side: older checkpoints saved the `position_ids`
        // buffer; it is always arange, so it is consumed and ignored.
        if vb.contains_tensor("position_ids") {
            vb.get_unchecked_dtype("position_ids", DType::I64)?;
        }
        let weight = vb.pp("patch_embedding").get((d, cfg.num_channels, p, p), "weight")?;
        Ok(Self {
            class_embedding: vb.get(d, "class_embedding")?,
            patch_embedding: Conv2d::new(weight, None, p, 0),
            position_embedding: Embedding::load(vb.pp("position_embedding"), cfg.grid() * cfg.grid() + 1, d)?,
        })
    }

    /// pixel_values [B, 3, S, S] -> [B, 1 + (S/p)^2, D].
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let b = pixel_values.dim(0)?;
        let patches = self.patch_embedding.forward(pixel_values)?; // [B, D, g, g]
        let d = patches.dim(1)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [B, g*g, D]
        let class = self.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding.weight)
    }
}

/// `CLIPVisionTransformer` (the `vision_model.` prefix of a `CLIPModel`).
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: ClipEncoder,
    pub post_layernorm: LayerNorm,
    pub config: ClipVisionConfig,
}

impl ClipVisionTransformer {
    pub fn load(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            embeddings: ClipVisionEmbeddings::load(vb.pp("embeddings"), cfg)?,
            pre_layrnorm: LayerNorm::load(vb.pp("pre_layrnorm"), d, eps)?,
            encoder: ClipEncoder::load(vb.pp("encoder"), &cfg.layer_config())?,
            post_layernorm: LayerNorm::load(vb.pp("post_layernorm"), d, eps)?,
            config: cfg.clone(),
        })
    }

    /// pixel_values [B, 3, S, S] (S = `image_size`, already normalised) ->
    /// `pooler_output` [B, D]: the final-normed class token.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        let s = self.config.image_size;
        if (c, h, w) != (3, s, s) {
            candle_core::bail!("the CLIP vision tower takes [B, 3, {s}, {s}] pixel values, got {:?}", pixel_values.dims());
        }
        let mut x = self.pre_layrnorm.forward(&self.embeddings.forward(pixel_values)?)?;
        for layer in &self.encoder.layers {
            x = layer.forward(&x, None)?;
        }
        let class = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.post_layernorm.forward(&class)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;
    use crate::models::clip::ClipActivation;
    use crate::nn::Weights;
    use crate::ops::gradcheck::det_tensor;

    fn tiny() -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 4,
            intermediate_size: 6,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 4,
            patch_size: 2,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    fn weights(cfg: &ClipVisionConfig) -> HashMap<String, Tensor> {
        let d = cfg.hidden_size;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.class_embedding".into(), vec![d]),
            ("embeddings.patch_embedding.weight".into(), vec![d, 3, 2, 2]),
            ("embeddings.position_embedding.weight".into(), vec![5, d]),
        ];
        for n in ["pre_layrnorm", "post_layernorm", "encoder.layers.0.layer_norm1", "encoder.layers.0.layer_norm2"] {
            shapes.push((format!("{n}.weight"), vec![d]));
            shapes.push((format!("{n}.bias"), vec![d]));
        }
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            shapes.push((format!("encoder.layers.0.self_attn.{p}.weight"), vec![d, d]));
            shapes.push((format!("encoder.layers.0.self_attn.{p}.bias"), vec![d]));
        }
        shapes.push(("encoder.layers.0.mlp.fc1.weight".into(), vec![6, d]));
        shapes.push(("encoder.layers.0.mlp.fc1.bias".into(), vec![6]));
        shapes.push(("encoder.layers.0.mlp.fc2.weight".into(), vec![d, 6]));
        shapes.push(("encoder.layers.0.mlp.fc2.bias".into(), vec![d]));
        shapes.into_iter().enumerate().map(|(i, (k, s))| (k, det_tensor(&s, 10 + i as u64))).collect()
    }

    /// Unlike the text tower, every token sees every other: changing the
    /// last patch changes the class token's output.
    #[test]
    fn vision_attention_is_not_causal_and_sizes_are_checked() {
        let cfg = tiny();
        let w = Weights::from_tensors(weights(&cfg), "v", DType::F64, &Device::Cpu);
        let m = ClipVisionTransformer::load(w.var_builder(), &cfg).unwrap();
        w.finish().unwrap();
        let a = det_tensor(&[1, 3, 4, 4], 1);
        let mut v = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        *v.last_mut().unwrap() += 1.0;
        let b = Tensor::from_vec(v, (1, 3, 4, 4), &Device::Cpu).unwrap();
        let (pa, pb) = (m.forward(&a).unwrap(), m.forward(&b).unwrap());
        let d = (pa - pb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d > 0.0);
        let msg = m.forward(&det_tensor(&[1, 3, 6, 6], 1)).unwrap_err().to_string();
        assert!(msg.contains("[B, 3, 4, 4]"), "{msg}");
    }
}
