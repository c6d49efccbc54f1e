//! Can the emoji evaluator see a style change at 1 step? (README, style
//! transfer.) For a LoRA trained on the emoji model it samples the val-fold
//! Noto prompts at fixed seeds (so 1 and 4 steps start from the same noise)
//! and measures, besides base and tuned at 1 and 4 steps:
//! - `paste xG`: the base 1-step images plus G times the change the LoRA
//!   made to the 4-step images (pixels): what a perfect one-step transfer
//!   at gain G would show;
//! - `lora xS @ N`: the LoRA applied at scale S, sampled at N steps.
//!
//!   cargo run --release -p psotune --example one_step_probe -- LORA.safetensors [PROMPTS]
//!
//! Run from the repository root (it reads models/emoji and assets/emoji).

mod probe_setup;

use std::path::Path;

use candle_core::Tensor;
use probe_setup::{Probe, MODEL};
use psotune::error::Result;
use psotune::eval::{quantize_8bit, sample_prompts, SampleSettings};
use psotune::pipeline::{LoadOptions, Pipeline};

fn pipeline(lora: Option<(&Path, f64)>) -> Result<Pipeline> {
    let mut p = Pipeline::load(Path::new(MODEL), &LoadOptions::default())?;
    if let Some((file, scale)) = lora {
        p.load_lora(file, scale)?;
    }
    Ok(p)
}

fn main() -> Result<()> {
    let Probe { lora, prompts, judge } = probe_setup::from_args("one_step_probe")?;
    let lora = lora.as_path();
    let at = |pipe: &Pipeline, steps| sample_prompts(pipe, &prompts.prompts, &SampleSettings { steps: Some(steps), seed: 0, batch: 16, ..Default::default() }, |_| {});

    let (base, tuned) = (pipeline(None)?, pipeline(Some((lora, 1.0)))?);
    let (b1, b4, t1, t4) = (at(&base, 1)?, at(&base, 4)?, at(&tuned, 1)?, at(&tuned, 4)?);
    let change4 = (&t4 - &b4)?;
    let mut rows: Vec<(String, Tensor)> = vec![("base @ 1".into(), b1.clone()), ("base @ 4".into(), b4), ("tuned @ 1".into(), t1.clone()), ("tuned @ 4".into(), t4)];
    for gain in [1.0, 2.0, 4.0] {
        rows.push((format!("paste x{gain} @ 1"), quantize_8bit(&(&b1 + (&change4 * gain)?)?)?));
    }
    for scale in [2.0, 4.0] {
        let p = pipeline(Some((lora, scale)))?;
        rows.push((format!("lora x{scale} @ 1"), at(&p, 1)?));
        rows.push((format!("lora x{scale} @ 4"), at(&p, 4)?));
    }
    // How much of the 4-step change the 1-step output carries: the
    // least-squares coefficient and cosine of the 1-step change on it.
    let change1 = (&t1 - &b1)?;
    let dot = |a: &Tensor, b: &Tensor| -> Result<f64> { Ok((a * b)?.sum_all()?.to_scalar::<f32>()? as f64) };
    let (c14, c44, c11) = (dot(&change1, &change4)?, dot(&change4, &change4)?, dot(&change1, &change1)?);
    println!("{} prompts; 1-step change on the 4-step change: coefficient {:.3}, cosine {:.3}\n", prompts.len(), c14 / c44, c14 / (c11 * c44).sqrt());
    println!("| images | emoji-FID to Noto | prompt alignment | Noto score | sharpness |\n|---|---|---|---|---|");
    for (label, images) in &rows {
        let m = judge.measure(images, &prompts.categories)?;
        let noto = m.style_scores.get("noto").copied().unwrap_or(f64::NAN);
        println!("| {label} | {:.2} | {:.3} | {noto:.3} | {:.4} |", m.emoji_fid, m.prompt_alignment, m.sharpness);
    }
    Ok(())
}
