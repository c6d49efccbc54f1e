//! Making offline preference pairs from a model's own samples: for every
//! prompt, draw K images, score them with a reward, keep the best as
//! `chosen` and the worst as `rejected` (prompts whose scores are all
//! within `min_margin` are ties and skipped). The result is a pairs
//! manifest that `[data] kind = "pairs"` trains on — the offline form of
//! PSO with a scorer in the loop once, up front.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pipeline::image::save_png;
use crate::pipeline::{Pipeline, SampleRequest};
use crate::reward::Reward;

/// How to make the pairs.
#[derive(Debug, Clone)]
pub struct PairsSpec {
    /// Samples per prompt (at least 2); the best and the worst become the pair.
    pub samples_per_prompt: usize,
    /// Prompt i samples with seed `seed + i`.
    pub seed: u64,
    /// Best minus worst score at or below this is a tie: no pair.
    pub min_margin: f64,
    /// Sampling steps (None: the model's own).
    pub steps: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairsSummary {
    pub manifest: PathBuf,
    pub pairs: usize,
    pub ties: usize,
    /// Mean reward of all samples, of the chosen and of the rejected ones.
    pub mean_score: f64,
    pub mean_chosen: f64,
    pub mean_rejected: f64,
}

#[derive(Serialize)]
struct Line<'a> {
    prompt: &'a str,
    chosen: String,
    rejected: String,
    chosen_score: f32,
    rejected_score: f32,
}

/// Index of the largest and of the smallest score (first on equal values).
pub fn best_and_worst(scores: &[f32]) -> Option<(usize, usize)> {
    if scores.is_empty() {
        return None;
    }
    let (mut hi, mut lo) = (0, 0);
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[hi] {
            hi = i;
        }
        if *s < scores[lo] {
            lo = i;
        }
    }
    Some((hi, lo))
}

/// Write `out/pairs.jsonl` and `out/images/*.png`; `progress(done)` after each prompt.
pub fn make_pairs(
    pipe: &Pipeline,
    prompts: &[String],
    reward: &mut dyn Reward,
    spec: &PairsSpec,
    out: &Path,
    mut progress: impl FnMut(usize),
) -> Result<PairsSummary> {
    if spec.samples_per_prompt < 2 {
        return Err(Error::invalid("make_pairs: samples per prompt must be at least 2"));
    }
    if prompts.is_empty() {
        return Err(Error::invalid("make_pairs: no prompts"));
    }
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| Error::io(&images_dir, e))?;
    let (mut lines, mut ties, mut all, mut chosen, mut rejected) = (String::new(), 0, Vec::new(), Vec::new(), Vec::new());
    for (i, prompt) in prompts.iter().enumerate() {
        let req = SampleRequest { prompts: vec![prompt.clone(); spec.samples_per_prompt], steps: spec.steps, seed: spec.seed + i as u64, ..Default::default() };
        let images = pipe.sample(&req)?.images; // [0, 1]
        let model_space = ((&images * 2.0)? - 1.0)?;
        let scores = reward.score(&model_space, &vec![prompt.clone(); spec.samples_per_prompt])?;
        if scores.len() != spec.samples_per_prompt || scores.iter().any(|s| !s.is_finite()) {
            return Err(Error::invalid(format!("reward {} gave {:?} for {} images of {prompt:?}", reward.name(), scores, spec.samples_per_prompt)));
        }
        all.extend(scores.iter().map(|s| *s as f64));
        let (hi, lo) = best_and_worst(&scores).expect("at least 2 scores");
        if (scores[hi] - scores[lo]) as f64 <= spec.min_margin {
            ties += 1;
        } else {
            let name = |tag: &str| format!("images/{i:05}-{tag}.png");
            save_png(&images.get(hi)?, &out.join(name("chosen")))?;
            save_png(&images.get(lo)?, &out.join(name("rejected")))?;
            let line = Line { prompt, chosen: name("chosen"), rejected: name("rejected"), chosen_score: scores[hi], rejected_score: scores[lo] };
            lines += &serde_json::to_string(&line).map_err(|e| Error::invalid(e.to_string()))?;
            lines.push('\n');
            chosen.push(scores[hi] as f64);
            rejected.push(scores[lo] as f64);
        }
        progress(i + 1);
    }
    if chosen.is_empty() {
        return Err(Error::invalid(format!("make_pairs: every prompt was a tie (margin <= {})", spec.min_margin)));
    }
    // Written last and renamed: a manifest on disk is always complete.
    let manifest = out.join("pairs.jsonl");
    let tmp = out.join("pairs.jsonl.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(lines.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &manifest).map_err(|e| Error::io(&manifest, e))?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok(PairsSummary { manifest, pairs: chosen.len(), ties, mean_score: mean(&all), mean_chosen: mean(&chosen), mean_rejected: mean(&rejected) })
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_and_worst_by_hand() {
        assert_eq!(best_and_worst(&[0.2, 0.9, -1.0, 0.9]), Some((1, 2)));
        assert_eq!(best_and_worst(&[1.0, 1.0]), Some((0, 0)));
        assert_eq!(best_and_worst(&[]), None);
    }

    /// Mean brightness: a reward anyone can compute by hand.
    struct Brightness;
    impl Reward for Brightness {
        fn name(&self) -> &str {
            "brightness"
        }
        fn score(&mut self, images: &candle_core::Tensor, _: &[String]) -> Result<Vec<f32>> {
            Ok(images.flatten_from(1)?.mean(1)?.to_vec1::<f32>()?)
        }
    }

    #[test]
    fn pairs_from_a_tiny_model_read_back_as_a_manifest() {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sd21-tiny");
        let pipe = Pipeline::load(&model, &Default::default()).unwrap();
        let out = crate::scratch::ScratchDir::new("psotune-make-pairs").unwrap();
        let prompts = vec!["a red square".to_string(), "a blue circle".to_string()];
        let spec = PairsSpec { samples_per_prompt: 3, seed: 5, min_margin: 0.0, steps: Some(1) };
        let s = make_pairs(&pipe, &prompts, &mut Brightness, &spec, &out, |_| {}).unwrap();
        assert_eq!(s.pairs + s.ties, 2);
        assert!(s.mean_chosen > s.mean_rejected);
        let m = crate::data::PairManifest::open(&s.manifest).unwrap();
        assert_eq!(m.items.len(), s.pairs);
        // The chosen file really is the brighter one.
        let img = |p: &std::path::Path| crate::pipeline::image::load_image(p, &candle_core::Device::Cpu).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(img(&m.items[0].chosen) > img(&m.items[0].rejected));
        let mut none = Brightness;
        let e = make_pairs(&pipe, &prompts, &mut none, &PairsSpec { samples_per_prompt: 1, ..spec }, &out, |_| {}).unwrap_err();
        assert!(e.to_string().contains("at least 2"));
    }
}
