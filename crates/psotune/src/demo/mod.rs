//! `psotune demo`: the tool's main job on the built-in emoji model, start
//! to finish in a few minutes on two CPU cores. It tunes the 4-step model
//! towards the Noto style with PSO (exactly `examples/style.toml`),
//! exports the LoRA in both formats, measures base and tuned model side by
//! side on Noto concepts no step trained on, and writes an HTML report
//! (`report.html`) with the comparison grid, the numbers, the training
//! curves and the validation samples over time. Rerunning resumes the run
//! and rewrites the report.

mod chart;
mod html;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::eval::{compare, Candidate, CompareRow, CompareSpec};
use crate::train::CONFIG_FILE;
use crate::tune::{self, export_run, ExportFormat, RunConfig};

pub use chart::{line_chart, moving_average};

/// The demo's run config: the style-transfer example itself.
pub const DEMO_CONFIG: &str = include_str!("../../../../examples/style.toml");

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The built-in model folder (with its `evaluator/`).
    pub model: PathBuf,
    /// The emoji data (assets/emoji).
    pub data: PathBuf,
    /// Output folder: run/, the LoRA files, report.html.
    pub out: PathBuf,
    /// Optimizer steps.
    pub steps: u64,
    /// Held-out prompts to measure on.
    pub eval_prompts: usize,
}

pub struct DemoSummary {
    pub report: PathBuf,
    pub lora_diffusers: PathBuf,
    pub lora_kohya: PathBuf,
    pub rows: Vec<CompareRow>,
}

/// A string as a TOML value for `--set`-style overrides.
fn toml_str(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

/// What the run trains, said plainly: which parts are the paper's PSO and
/// which are psotune's own (the one-step transfer term).
pub fn method_line(cfg: &RunConfig) -> String {
    let o = &cfg.objective;
    let ts = match &o.timesteps {
        Some(t) => format!(" at t = {}", t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join("/")),
        None => " at the model's own timesteps".to_string(),
    };
    let beta = o.beta.unwrap_or(o.kind.default_beta());
    let mut line = format!("{} (beta {beta}){ts}", if o.kind == crate::objectives::ObjectiveKind::Pso { "PSO, the paper's loss".to_string() } else { o.kind.to_string() });
    if o.one_step_transfer > 0.0 {
        line += &format!(", plus psotune's one-step transfer term (weight {}; not in the paper)", o.one_step_transfer);
    }
    line
}

pub fn run(o: &DemoOptions, mut log: impl FnMut(&str)) -> Result<DemoSummary> {
    if o.steps == 0 {
        return Err(Error::invalid("demo: --steps must be at least 1"));
    }
    let every = (o.steps / 4).max(1);
    let sets = vec![
        format!("model.path={}", toml_str(&o.model)),
        format!("data.images={}", toml_str(&o.data)),
        format!("optim.max-steps={}", o.steps),
        format!("validation.every={every}"),
        format!("checkpoint.every={every}"),
    ];
    let cfg = RunConfig::from_toml(DEMO_CONFIG, Path::new("examples/style.toml"), &sets)?;
    let run_dir = o.out.join("run");
    let resume = run_dir.join(CONFIG_FILE).is_file();
    let method = method_line(&cfg);
    log(&format!("1/3 tuning {} towards the Noto style: {method} ({} steps) in {}", o.model.display(), o.steps, run_dir.display()));
    let summary = tune::run(&cfg, &run_dir, resume)?;

    let lora_diffusers = export_run(&run_dir, ExportFormat::Diffusers, &o.out.join("pytorch_lora_weights.safetensors"), None)?;
    let lora_kohya = export_run(&run_dir, ExportFormat::Kohya, &o.out.join("emoji-noto-kohya.safetensors"), None)?;
    log(&format!("2/3 measuring base and tuned model on {} held-out Noto concepts", o.eval_prompts));
    let noto_val = BTreeMap::from([("style".to_string(), "noto".to_string()), ("fold".to_string(), "val".to_string())]);
    let spec = CompareSpec {
        model: o.model.clone(),
        evaluator: o.model.join("evaluator"),
        data: o.data.clone(),
        prompts: noto_val.clone(),
        reference: noto_val,
        num_prompts: o.eval_prompts,
        steps: vec![Some(1), Some(4)],
        seed: 0,
        batch: 64,
        grid_prompts: 8,
        instance: None,
        reward: None,
    };
    let candidates = [Candidate { label: "base".into(), lora: None }, Candidate { label: "PSO (Noto)".into(), lora: Some(lora_diffusers.clone()) }];
    let comparison = compare(&spec, &candidates, &mut log)?;
    comparison.save_grid(&o.out.join("comparison.png"), 3)?;

    log("3/3 writing the report");
    let report = o.out.join("report.html");
    let page = html::page(&html::PageInputs { run_dir: &run_dir, out: &o.out, comparison: &comparison, steps: summary.steps, seconds: summary.seconds, method: &method })?;
    std::fs::write(&report, page).map_err(|e| Error::io(&report, e))?;
    Ok(DemoSummary { report, lora_diffusers, lora_kohya, rows: comparison.rows })
}
