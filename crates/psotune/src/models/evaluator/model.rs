//! The evaluator network and its scoring helpers.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::EvaluatorDownBlock;
use super::config::EvaluatorConfig;
use crate::error::Error;
use crate::nn::{Conv2d, GroupNorm, Linear, Weights};
use crate::ops;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Images per forward pass in the batched helpers: bounds the activation
/// memory (a 32x32 batch of 128 holds ~17 MB per 32-channel map).
const CHUNK: usize = 128;

/// What one forward pass gives.
#[derive(Debug, Clone)]
pub struct EvaluatorOutput {
    /// Pooled features [B, feature_dim] (what emoji-FID and similarity use).
    pub features: Tensor,
    /// [B, styles]
    pub style_logits: Tensor,
    /// [B, categories]
    pub category_logits: Tensor,
}

/// `conv_in -> down_blocks -> norm_out + SiLU -> mean over pixels ->
/// features -> {style_head, category_head}`.
#[derive(Debug, Clone)]
pub struct Evaluator {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<EvaluatorDownBlock>,
    pub norm_out: GroupNorm,
    pub style_head: Linear,
    pub category_head: Linear,
    pub config: EvaluatorConfig,
}

impl Evaluator {
    pub fn new(vb: VarBuilder, config: &EvaluatorConfig) -> Result<Self> {
        if let Err(msg) = config.check() {
            candle_core::bail!("evaluator config: {msg}");
        }
        let ch = &config.block_channels;
        let groups = config.norm_num_groups;
        let conv_in = Conv2d::load(vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let vbi = vb.pp("down_blocks").pp(i);
            down_blocks.push(EvaluatorDownBlock::load(vbi, cin, cout, config.layers_per_block, i > 0, groups)?);
            cin = cout;
        }
        let d = config.feature_dim();
        let norm_out = GroupNorm::load(vb.pp("norm_out"), groups, d, 1e-5)?;
        let style_head = Linear::load(vb.pp("style_head"), d, config.styles.len(), true)?;
        let category_head = Linear::load(vb.pp("category_head"), d, config.categories.len(), true)?;
        Ok(Self { conv_in, down_blocks, norm_out, style_head, category_head, config: config.clone() })
    }

    /// Load an evaluator folder (`config.json`, `model.safetensors`) in f32,
    /// strictly: a missing, unused or mis-shaped tensor is an error naming it.
    pub fn load(dir: &Path, device: &Device) -> crate::Result<Self> {
        let config = EvaluatorConfig::from_file(&dir.join(CONFIG_FILE))?;
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(Error::ModelFolder { path: dir.to_path_buf(), msg: format!("no {WEIGHTS_FILE}") });
        }
        let weights = Weights::from_files(&[path], DType::F32, device)?;
        let model = Self::new(weights.var_builder(), &config)?;
        weights.finish()?;
        Ok(model)
    }

    /// One forward pass over images [B, in_channels, S, S] in [-1, 1].
    pub fn forward(&self, x: &Tensor) -> Result<EvaluatorOutput> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.config.image_size;
        if (c, h, w) != (self.config.in_channels, s, s) {
            candle_core::bail!("evaluator: images {:?}, expected [B, {}, {s}, {s}]", x.dims(), self.config.in_channels);
        }
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        let n = &self.norm_out;
        let h = ops::group_norm_silu(&h, n.num_groups, &n.weight, &n.bias, n.eps)?;
        let features = h.mean((2, 3))?;
        let style_logits = self.style_head.forward(&features)?;
        let category_logits = self.category_head.forward(&features)?;
        Ok(EvaluatorOutput { features, style_logits, category_logits })
    }

    /// [`Evaluator::forward`] over any number of images, in chunks, without
    /// tracking gradients.
    pub fn forward_batched(&self, images: &Tensor) -> crate::Result<EvaluatorOutput> {
        let n = self.check_images(images)?;
        let (mut f, mut s, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let out = self.forward(&images.narrow(0, start, len)?.detach())?;
            f.push(out.features.detach());
            s.push(out.style_logits.detach());
            c.push(out.category_logits.detach());
        }
        Ok(EvaluatorOutput { features: Tensor::cat(&f, 0)?, style_logits: Tensor::cat(&s, 0)?, category_logits: Tensor::cat(&c, 0)? })
    }

    /// Features [N, feature_dim] of images [N, 3, S, S] in [-1, 1].
    pub fn features(&self, images: &Tensor) -> crate::Result<Tensor> {
        Ok(self.forward_batched(images)?.features)
    }

    /// The probability of `style` for each image (the style score).
    pub fn style_scores(&self, images: &Tensor, style: &str) -> crate::Result<Vec<f32>> {
        let k = self.style_index(style).ok_or_else(|| {
            Error::invalid(format!("evaluator has no style `{style}` (it knows {})", self.config.styles.join(", ")))
        })?;
        let probs = ops::softmax_last_dim(&self.forward_batched(images)?.style_logits)?;
        Ok(probs.narrow(1, k, 1)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Category probabilities [N, categories].
    pub fn category_probs(&self, images: &Tensor) -> crate::Result<Tensor> {
        Ok(ops::softmax_last_dim(&self.forward_batched(images)?.category_logits)?)
    }

    /// The fraction of images whose most probable category is the one
    /// given for it (prompt alignment: `targets[i]` is the category of the
    /// prompt image i was made from, see [`Evaluator::category_index`]).
    pub fn category_accuracy(&self, images: &Tensor, targets: &[usize]) -> crate::Result<f64> {
        let logits = self.forward_batched(images)?.category_logits;
        accuracy(&logits, targets)
    }

    pub fn style_index(&self, style: &str) -> Option<usize> {
        self.config.styles.iter().position(|s| s == style)
    }

    pub fn category_index(&self, category: &str) -> Option<usize> {
        self.config.categories.iter().position(|s| s == category)
    }

    /// The image count of a batch this evaluator accepts, or an error
    /// naming the shape.
    fn check_images(&self, images: &Tensor) -> crate::Result<usize> {
        let s = self.config.image_size;
        match images.dims() {
            &[n, c, h, w] if (c, h, w) == (self.config.in_channels, s, s) && n > 0 => Ok(n),
            d => Err(Error::invalid(format!("evaluator: images {d:?}, expected [N, {}, {s}, {s}] with N > 0", self.config.in_channels))),
        }
    }
}

/// The fraction of rows of `logits` [N, C] whose arg-max is `targets[i]`.
pub fn accuracy(logits: &Tensor, targets: &[usize]) -> crate::Result<f64> {
    let (n, _) = logits.dims2()?;
    if n != targets.len() || n == 0 {
        return Err(Error::invalid(format!("accuracy: {n} rows of logits, {} targets", targets.len())));
    }
    let pred = logits.argmax(1)?.to_vec1::<u32>()?;
    let hits = pred.iter().zip(targets).filter(|(p, t)| **p as usize == **t).count();
    Ok(hits as f64 / n as f64)
}
