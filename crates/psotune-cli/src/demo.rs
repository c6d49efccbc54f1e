//! `psotune demo`: PSO style transfer on the built-in emoji model, measured,
//! with an HTML report (see psotune::demo).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use psotune::demo::{self, DemoOptions};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The built-in model (with its evaluator/).
    #[arg(long, default_value = "models/emoji")]
    model: PathBuf,
    /// The emoji data shipped with the repository.
    #[arg(long, default_value = "assets/emoji")]
    data: PathBuf,
    /// Output folder (rerun to resume).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Optimizer steps of the PSO run.
    #[arg(long, default_value_t = 600)]
    steps: u64,
    /// Held-out Noto prompts to measure on.
    #[arg(long, default_value_t = 128)]
    eval_prompts: usize,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let opts = DemoOptions { model: a.model, data: a.data, out: a.out.clone(), steps: a.steps, eval_prompts: a.eval_prompts };
    // Times depend on it: say where this runs (PSOTUNE_SIMD picks the path).
    eprintln!("{}", psotune::simd::describe());
    let s = demo::run(&opts, |line| eprintln!("{line}")).with_context(|| format!("demo in {}", a.out.display()))?;
    for r in &s.rows {
        let noto = r.measures.style_scores.get("noto").copied().unwrap_or(f64::NAN);
        println!("{:<12} {} step(s): Noto score {noto:.3}, emoji-FID {:.2}, sharpness {:.4}", r.label, r.steps, r.measures.emoji_fid, r.measures.sharpness);
    }
    println!("LoRA: {} (diffusers), {} (kohya)", s.lora_diffusers.display(), s.lora_kohya.display());
    println!("report: {}", s.report.display());
    Ok(())
}
