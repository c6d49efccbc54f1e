//! Sampling a prompt set in batches at fixed seeds, so that two models (or
//! one model at two step counts) draw from the same initial noise.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::pipeline::{Pipeline, SampleRequest, SamplerKind};

/// How to sample; `None` takes the model's defaults.
#[derive(Debug, Clone, Default)]
pub struct SampleSettings {
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    /// Batch `k` uses seed `seed + k`.
    pub seed: u64,
    /// Images per batch.
    pub batch: usize,
}

/// Images [N, 3, H, W] in [-1, 1] for `prompts`, quantized to 8 bits as
/// if saved and reloaded (the reference images are 8-bit PNGs, and the
/// metrics should not see a difference that saving removes). `progress` is
/// called with the number of images done.
pub fn sample_prompts(pipe: &Pipeline, prompts: &[String], s: &SampleSettings, mut progress: impl FnMut(usize)) -> Result<Tensor> {
    let batch = s.batch.max(1);
    let mut out = Vec::new();
    for (k, chunk) in prompts.chunks(batch).enumerate() {
        let req = SampleRequest {
            prompts: chunk.to_vec(),
            sampler: s.sampler,
            steps: s.steps,
            guidance: s.guidance,
            seed: s.seed + k as u64,
            ..Default::default()
        };
        let images = pipe.sample(&req)?.images;
        out.push(quantize_8bit(&((images * 2.0)? - 1.0)?)?);
        progress(out.iter().map(|t| t.dim(0).unwrap_or(0)).sum());
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Round images in [-1, 1] to the 256 levels of an 8-bit PNG.
pub fn quantize_8bit(images: &Tensor) -> Result<Tensor> {
    let levels = ((images.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?.round()?;
    Ok(((levels / 127.5)? - 1.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_maps_onto_png_levels() {
        let x = Tensor::new(&[-1f32, -0.999, 0.0, 0.5, 1.0, 1.7], &candle_core::Device::Cpu).unwrap();
        let q = quantize_8bit(&x).unwrap().to_vec1::<f32>().unwrap();
        // 0.0 -> 127.5 rounds to 128 -> 128/127.5 - 1.
        let expect = [-1.0, -1.0, 128.0 / 127.5 - 1.0, (191.25f32).round() / 127.5 - 1.0, 1.0, 1.0];
        for (a, b) in q.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
