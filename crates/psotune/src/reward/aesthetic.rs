//! The LAION aesthetic predictor: a head on L2-normalised CLIP ViT-L/14
//! image embeddings. v2 (improved-aesthetic-predictor, `simple_inference.py`)
//! is an MLP `layers.{0,2,4,6,7}` of `Linear`s (768 -> 1024 -> 128 -> 64 ->
//! 16 -> 1) with dropouts between and no activations; v1
//! (LAION-AI/aesthetic-predictor) is one `Linear(768, 1)` saved bare
//! (`weight`, `bias`). Both were fitted on embeddings made with OpenAI
//! CLIP's own preprocessing (torchvision `Resize` bicubic + `CenterCrop`),
//! which is used here rather than the transformers processor (they differ
//! by a pixel of crop offset on odd margins).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};

use super::image_text::{check_counts, normalise, rows};
use super::preprocess::{quantize, ImagePreprocess};
use super::resample::RgbU8;
use super::Reward;
use crate::error::{Error, Result};
use crate::models::clip::ClipImageEncoder;
use crate::nn::weights::read_safetensors;
use crate::nn::{Linear, Weights};

/// The v2 MLP's `Linear` indices inside its `nn.Sequential`.
const MLP_LAYERS: [usize; 5] = [0, 2, 4, 6, 7];

/// A head: `Linear`s applied in turn (no activations, as trained).
#[derive(Debug, Clone)]
pub struct AestheticHead {
    pub layers: Vec<Linear>,
    /// `"mlp"` (v2) or `"linear"` (v1).
    pub kind: &'static str,
}

impl AestheticHead {
    /// Read a head from safetensors, checking that it takes `in_dim`
    /// features and gives one score.
    pub fn from_file(path: &Path, in_dim: usize, device: &Device) -> Result<Self> {
        let tensors = read_safetensors(path)?;
        let shape_of = |k: &str| tensors.get(k).map(|t| t.dims().to_vec());
        let bad = |msg: String| Error::config(path, msg);
        let (kind, names): (&'static str, Vec<String>) = if tensors.contains_key("layers.0.weight") {
            ("mlp", MLP_LAYERS.iter().map(|i| format!("layers.{i}")).collect())
        } else if tensors.contains_key("weight") {
            ("linear", vec![String::new()])
        } else {
            let mut keys: Vec<&String> = tensors.keys().collect();
            keys.sort();
            return Err(bad(format!(
                "not an aesthetic head: expected layers.0.weight ... layers.7.weight (v2 MLP) or weight/bias (v1 linear), found {keys:?}"
            )));
        };
        let weights = Weights::from_tensors(tensors.clone(), path, DType::F32, device);
        let vb = weights.var_builder();
        let mut layers = Vec::new();
        let mut width = in_dim;
        for (i, name) in names.iter().enumerate() {
            let key = if name.is_empty() { "weight".to_string() } else { format!("{name}.weight") };
            let Some(shape) = shape_of(&key) else {
                return Err(bad(format!("missing {key}")));
            };
            let [out, inp] = shape[..] else {
                return Err(bad(format!("{key} has shape {shape:?}, expected [out, in]")));
            };
            if inp != width {
                return Err(bad(format!("{key} takes {inp} features, expected {width} (the CLIP image embedding is {in_dim} wide)")));
            }
            if i == names.len() - 1 && out != 1 {
                return Err(bad(format!("{key} gives {out} outputs, expected one score")));
            }
            let layer_vb = if name.is_empty() { vb.clone() } else { vb.pp(name) };
            layers.push(Linear::load(layer_vb, inp, out, true)?);
            width = out;
        }
        weights.finish()?;
        Ok(Self { layers, kind })
    }

    /// [N, D] normalised embeddings -> [N] scores.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        Ok(x.squeeze(1)?)
    }
}

/// The aesthetic score of images (prompts are ignored).
pub struct AestheticScorer {
    pub image: ClipImageEncoder,
    pub head: AestheticHead,
    preprocess: ImagePreprocess,
    device: Device,
    name: &'static str,
}

impl AestheticScorer {
    /// `head`: the head's `.safetensors` (converted from the `.pth`);
    /// `clip_dir`: the transformers `CLIPModel` folder of the CLIP it was
    /// fitted on (ViT-L/14: `config.json`, `model.safetensors`; only the
    /// image tower is loaded; mean and std come from its
    /// `preprocessor_config.json` when present).
    pub fn load(head: &Path, clip_dir: &Path, device: &Device) -> Result<Self> {
        let (image, cfg) = ClipImageEncoder::from_clip_dir(clip_dir, device)?;
        let head = AestheticHead::from_file(head, cfg.projection_dim, device)?;
        let size = cfg.vision_config.image_size;
        let proc_path = clip_dir.join("preprocessor_config.json");
        let base = if proc_path.is_file() { ImagePreprocess::from_processor_config(&proc_path)? } else { ImagePreprocess::clip_processor(size) };
        let preprocess = ImagePreprocess::torchvision(size, base.mean, base.std);
        let name = if head.kind == "mlp" { "aesthetic" } else { "aesthetic-v1" };
        Ok(Self { image, head, preprocess, device: device.clone(), name })
    }

    pub fn preprocess(&self) -> &ImagePreprocess {
        &self.preprocess
    }

    /// L2-normalised image embeddings [N, D].
    pub fn image_embeds(&self, images: &[RgbU8]) -> Result<Tensor> {
        let pixels = self.preprocess.pixel_values(images, &self.device)?;
        let emb = rows(&self.image.forward(&pixels)?)?;
        let d = emb.first().map_or(0, Vec::len);
        let flat: Vec<f32> = emb.iter().flat_map(|r| normalise(r)).collect();
        Ok(Tensor::from_vec(flat, (emb.len(), d), &self.device)?)
    }

    pub fn score_images(&self, images: &[RgbU8]) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let scores: Vec<f32> = self.head.forward(&self.image_embeds(images)?)?.to_dtype(DType::F32)?.to_vec1()?;
        if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
            return Err(Error::invalid(format!("the aesthetic head gave a non-finite score ({bad})")));
        }
        Ok(scores)
    }
}

impl Reward for AestheticScorer {
    fn name(&self) -> &str {
        self.name
    }

    fn score(&mut self, images: &Tensor, prompts: &[String]) -> Result<Vec<f32>> {
        let images = quantize(images)?;
        check_counts(images.len(), prompts)?;
        self.score_images(&images)
    }
}
