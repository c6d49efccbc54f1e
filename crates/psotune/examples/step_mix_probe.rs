//! Which sampling steps carry a style LoRA's change, and which soften the
//! 4-step samples? (README, style transfer.) It samples the val-fold Noto
//! prompts at 4 steps with the LoRA switched on for some of the steps only
//! (`L.LL`: on at steps 1, 3 and 4), every mix from the same noise, and at
//! 1 step with and without it. Each row gives the evaluator's measures and
//! the paired change (with its standard error over prompts) of the Noto
//! score and of sharpness against the base model at the same step count.
//!
//!   cargo run --release -p psotune --example step_mix_probe -- LORA.safetensors [PROMPTS]
//!
//! Run from the repository root (it reads models/emoji and assets/emoji).

mod probe_setup;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use probe_setup::{Probe, MODEL};
use psotune::diffusion::NoiseRng;
use psotune::error::{Error, Result};
use psotune::eval::quantize_8bit;
use psotune::metrics::laplacian_variances;
use psotune::pipeline::{LoadOptions, Pipeline};
const BATCH: usize = 16;

/// The mixes: `true` where the LoRA is on, one entry per step.
const MIXES: [&[bool]; 10] = [
    &[false],
    &[true],
    &[false; 4],
    &[true; 4],
    &[true, false, false, false],
    &[true, true, false, false],
    &[true, true, true, false],
    &[false, true, true, true],
    &[false, false, true, true],
    &[false, false, false, true],
];

/// Images for `prompts` from the model's own sampler with `on.len()` steps,
/// step i predicted by `pipes[on[i]]` (0: base, 1: tuned). Batch k draws
/// its start and step noise from seed k, so every mix sees the same noise.
fn sample(pipes: [&Pipeline; 2], on: &[bool], prompts: &[String]) -> Result<Tensor> {
    let base = pipes[0];
    let sampler = base.sampler(base.defaults.sampler, on.len(), None)?;
    let (f, channels) = (base.vae_factor(), base.unet.config().in_channels);
    let size = base.defaults.width.ok_or_else(|| Error::invalid("the model has no default image size"))? / f;
    let mut out = Vec::new();
    for (k, chunk) in prompts.chunks(BATCH).enumerate() {
        let mut rng = NoiseRng::new(k as u64);
        let mut x = (rng.randn((chunk.len(), channels, size, size), DType::F32, &base.device)? * sampler.init_noise_sigma())?;
        let cond = base.encode_prompts(&chunk.iter().map(String::as_str).collect::<Vec<_>>())?;
        for (i, &tuned) in on.iter().enumerate() {
            let pipe = pipes[tuned as usize];
            let xin = sampler.scale_model_input(&x, i)?.to_dtype(pipe.dtype)?;
            let t = Tensor::full(sampler.timesteps()[i] as f32, chunk.len(), &base.device)?;
            let eps = pipe.predict(&xin, &t, &cond, None, pipe.defaults.guidance)?.to_dtype(DType::F32)?;
            let noise = if sampler.needs_noise(i) { Some(rng.randn(x.shape(), DType::F32, &base.device)?) } else { None };
            x = sampler.step(i, &x, &eps, noise.as_ref())?.prev.detach();
        }
        let decoded = base.vae.image_from_latents(&x.to_dtype(base.dtype)?)?.to_dtype(DType::F32)?;
        out.push(quantize_8bit(&decoded)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Mean and standard error of the paired differences `a - b`.
fn paired_change(a: &[f64], b: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

fn main() -> Result<()> {
    let Probe { lora, prompts, judge } = probe_setup::from_args("step_mix_probe")?;
    let ev = probe_setup::evaluator()?;
    let noto = ev.style_index("noto").ok_or_else(|| Error::invalid("the evaluator has no `noto` style"))?;
    let base = Pipeline::load(Path::new(MODEL), &LoadOptions::default())?;
    let mut tuned = Pipeline::load(Path::new(MODEL), &LoadOptions::default())?;
    tuned.load_lora(&lora, 1.0)?;

    println!("{} prompts\n", prompts.len());
    println!("| LoRA on steps | emoji-FID to Noto | prompt alignment | Noto score | Noto change (SE) | sharpness | sharpness change (SE) |");
    println!("|---|---|---|---|---|---|---|");
    // Per step count: the base model's per-image Noto probabilities and sharpness.
    let mut base_rows: BTreeMap<usize, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for on in MIXES {
        let images = sample([&base, &tuned], on, &prompts.prompts)?;
        let m = judge.measure(&images, &prompts.categories)?;
        let probs = psotune::ops::softmax_last_dim(&ev.forward_batched(&images)?.style_logits)?;
        let probs: Vec<f64> = probs.narrow(1, noto, 1)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
        let sharp = laplacian_variances(&images)?;
        let (base_probs, base_sharp) = base_rows.entry(on.len()).or_insert_with(|| (probs.clone(), sharp.clone()));
        let (dn, dn_se) = paired_change(&probs, base_probs);
        let (ds, ds_se) = paired_change(&sharp, base_sharp);
        let label: String = on.iter().map(|&b| if b { 'L' } else { '.' }).collect();
        let score = m.style_scores.get("noto").copied().unwrap_or(f64::NAN);
        println!(
            "| {label} | {:.2} | {:.3} | {score:.3} | {dn:+.3} ({dn_se:.3}) | {:.4} | {ds:+.4} ({ds_se:.4}) |",
            m.emoji_fid, m.prompt_alignment, m.sharpness
        );
    }
    Ok(())
}
