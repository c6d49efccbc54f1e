//! What CLIP score, PickScore and HPSv2 share: embed the images and the
//! prompts with a dual encoder, take the cosine of each image with its own
//! prompt, and map it to the scorer's scale. Only the model, the
//! preprocessing and that last map differ (see clip_score.rs, pickscore.rs,
//! hpsv2.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::preprocess::{quantize, ImagePreprocess};
use super::resample::RgbU8;
use super::Reward;
use crate::error::{Error, Result};
use crate::models::clip::{ClipModel, ClipTokenizer};
use crate::models::open_clip::OpenClipModel;

/// A model with an image tower and a text tower in one embedding space.
pub trait DualEncoder {
    /// pixel_values [N, 3, S, S] -> [N, D], not normalised.
    fn image_embeds(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor>;
    /// input_ids [N, L] -> [N, D], not normalised.
    fn text_embeds(&self, input_ids: &Tensor) -> candle_core::Result<Tensor>;
}

impl DualEncoder for ClipModel {
    fn image_embeds(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        ClipModel::image_embeds(self, pixel_values)
    }
    fn text_embeds(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        ClipModel::text_embeds(self, input_ids)
    }
}

impl DualEncoder for OpenClipModel {
    fn image_embeds(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        OpenClipModel::image_embeds(self, pixel_values)
    }
    fn text_embeds(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        OpenClipModel::text_embeds(self, input_ids)
    }
}

/// From cosine similarity to the published score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreRule {
    /// torchmetrics' `CLIPScore`: 100 * max(cos, 0).
    ClipScore,
    /// PickScore: `logit_scale.exp() * cos` (the scale is the model's own).
    Scaled(f32),
    /// HPSv2: the cosine itself.
    Cosine,
}

impl ScoreRule {
    pub fn apply(self, cos: f32) -> f32 {
        match self {
            ScoreRule::ClipScore => (100.0 * cos).max(0.0),
            ScoreRule::Scaled(s) => s * cos,
            ScoreRule::Cosine => cos,
        }
    }
}

/// Text embeddings kept between calls: online PSO scores two samples per
/// prompt and revisits its prompt list every epoch. Bounded so that an
/// endless stream of prompts cannot grow it without limit.
const TEXT_CACHE_LIMIT: usize = 4096;

/// A CLIP-family scorer of images against their prompts.
pub struct ImageTextScorer {
    name: &'static str,
    model: Box<dyn DualEncoder>,
    tokenizer: ClipTokenizer,
    preprocess: ImagePreprocess,
    rule: ScoreRule,
    device: Device,
    /// prompt -> normalised text embedding.
    cache: HashMap<String, Vec<f32>>,
}

impl ImageTextScorer {
    pub fn new(
        name: &'static str,
        model: Box<dyn DualEncoder>,
        tokenizer: ClipTokenizer,
        preprocess: ImagePreprocess,
        rule: ScoreRule,
        device: &Device,
    ) -> Self {
        Self { name, model, tokenizer, preprocess, rule, device: device.clone(), cache: HashMap::new() }
    }

    pub fn preprocess(&self) -> &ImagePreprocess {
        &self.preprocess
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    pub fn rule(&self) -> ScoreRule {
        self.rule
    }

    /// 8-bit images -> image embeddings [N, D] (not normalised).
    pub fn image_embeds(&self, images: &[RgbU8]) -> Result<Tensor> {
        let pixels = self.preprocess.pixel_values(images, &self.device)?;
        Ok(self.model.image_embeds(&pixels)?)
    }

    /// Prompts -> text embeddings [N, D] (not normalised, not cached).
    pub fn text_embeds(&self, prompts: &[String]) -> Result<Tensor> {
        let ids = self.tokenizer.encode_batch_tensor(prompts, &self.device)?;
        Ok(self.model.text_embeds(&ids)?)
    }

    /// Scores of 8-bit images (what [`Reward::score`] runs after quantizing).
    pub fn score_images(&mut self, images: &[RgbU8], prompts: &[String]) -> Result<Vec<f32>> {
        check_counts(images.len(), prompts)?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let img = rows(&self.image_embeds(images)?)?;
        self.cache_prompts(prompts)?;
        let mut out = Vec::with_capacity(img.len());
        for (i, p) in img.iter().zip(prompts) {
            let t = self.cache.get(p).ok_or_else(|| Error::invalid("internal: prompt missing from the text cache"))?;
            let score = self.rule.apply(cosine_normalised(&normalise(i), t));
            if !score.is_finite() {
                return Err(Error::invalid(format!("{} gave a non-finite score for prompt {p:?}", self.name)));
            }
            out.push(score);
        }
        Ok(out)
    }

    /// Embeds, in one batch, every prompt not yet cached.
    fn cache_prompts(&mut self, prompts: &[String]) -> Result<()> {
        let mut todo: Vec<String> = prompts.iter().filter(|p| !self.cache.contains_key(*p)).cloned().collect();
        todo.sort();
        todo.dedup();
        if todo.is_empty() {
            return Ok(());
        }
        if self.cache.len() + todo.len() > TEXT_CACHE_LIMIT {
            self.cache.clear();
        }
        let emb = rows(&self.text_embeds(&todo)?)?;
        for (p, e) in todo.into_iter().zip(emb) {
            self.cache.insert(p, normalise(&e));
        }
        Ok(())
    }
}

impl Reward for ImageTextScorer {
    fn name(&self) -> &str {
        self.name
    }

    fn score(&mut self, images: &Tensor, prompts: &[String]) -> Result<Vec<f32>> {
        let images = quantize(images)?;
        self.score_images(&images, prompts)
    }
}

pub(crate) fn check_counts(n: usize, prompts: &[String]) -> Result<()> {
    if n != prompts.len() {
        return Err(Error::invalid(format!("{n} images but {} prompts (one prompt per image)", prompts.len())));
    }
    Ok(())
}

/// [N, D] -> N host rows.
pub(crate) fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2()?)
}

/// x / |x| (accumulated in f64; a zero vector stays zero).
pub(crate) fn normalise(x: &[f32]) -> Vec<f32> {
    let n = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    if n == 0.0 {
        return x.to_vec();
    }
    x.iter().map(|&v| (f64::from(v) / n) as f32).collect()
}

fn cosine_normalised(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>() as f32
}

/// The first of `dirs` that holds CLIP tokenizer files (`vocab.json` +
/// `merges.txt`, or `tokenizer.json`), directly or in a `tokenizer/`
/// subfolder.
pub(crate) fn find_tokenizer_dir(dirs: &[&Path]) -> Result<PathBuf> {
    let has = |d: &Path| (d.join("vocab.json").is_file() && d.join("merges.txt").is_file()) || d.join("tokenizer.json").is_file();
    for d in dirs {
        for cand in [d.to_path_buf(), d.join("tokenizer")] {
            if has(&cand) {
                return Ok(cand);
            }
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(Error::ModelFolder {
        path: dirs.first().map(|d| d.to_path_buf()).unwrap_or_default(),
        msg: format!("no CLIP tokenizer files (vocab.json + merges.txt, or tokenizer.json) in {} or a tokenizer/ folder there", looked.join(", ")),
    })
}

/// The parts of a transformers `CLIPModel` scorer: the model from `dir`,
/// the tokenizer and `preprocessor_config.json` from `processor_dir` when
/// given (PickScore_v1 ships without them; they are its base model's), else
/// from `dir`. Without a processor config, transformers' defaults at the
/// model's image size apply.
pub(crate) fn clip_model_parts(dir: &Path, processor_dir: Option<&Path>, device: &Device) -> Result<(ClipModel, ClipTokenizer, ImagePreprocess)> {
    let model = ClipModel::from_dir(dir, device)?;
    let dirs: Vec<&Path> = processor_dir.into_iter().chain([dir]).collect();
    let tok_dir = find_tokenizer_dir(&dirs)?;
    let tokenizer = ClipTokenizer::from_dir(&tok_dir)?;
    let max_pos = model.config.text_config.max_position_embeddings;
    if tokenizer.max_length() > max_pos {
        return Err(Error::Tokenizer {
            path: tok_dir,
            msg: format!("model_max_length {} exceeds the text tower's max_position_embeddings {max_pos}", tokenizer.max_length()),
        });
    }
    let size = model.config.vision_config.image_size;
    let (preprocess, source) = match dirs.iter().map(|d| d.join("preprocessor_config.json")).find(|p| p.is_file()) {
        Some(p) => (ImagePreprocess::from_processor_config(&p)?, p),
        None => (ImagePreprocess::clip_processor(size), dir.join("config.json")),
    };
    check_output_size(&preprocess, size, &source)?;
    Ok((model, tokenizer, preprocess))
}

/// The preprocessing must give the square the vision tower was built for.
pub(crate) fn check_output_size(p: &ImagePreprocess, size: usize, source: &Path) -> Result<()> {
    match p.output_size() {
        Some(hw) if hw == (size, size) => Ok(()),
        other => Err(Error::config(
            source,
            format!(
                "preprocessing gives {} pixels but the vision tower takes {size}x{size}",
                other.map(|(h, w)| format!("{h}x{w}")).unwrap_or_else(|| "variable-size".into())
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_rules() {
        assert_eq!(ScoreRule::ClipScore.apply(0.25), 25.0);
        assert_eq!(ScoreRule::ClipScore.apply(-0.1), 0.0);
        assert_eq!(ScoreRule::Scaled(100.0).apply(-0.2), -20.0);
        assert_eq!(ScoreRule::Cosine.apply(0.3), 0.3);
    }

    #[test]
    fn normalise_and_cosine() {
        let a = normalise(&[3.0, 4.0]);
        assert_eq!(a, vec![0.6, 0.8]);
        assert_eq!(normalise(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert!((cosine_normalised(&a, &normalise(&[4.0, -3.0]))).abs() < 1e-7);
    }
}
