//! `psotune eval`: measure the base model and tuned runs or LoRAs side by
//! side on the same prompts and seeds (emoji-FID, style scores, prompt
//! alignment, sharpness, and optionally similarity to instance images).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use psotune::data::list_images;
use psotune::eval::{compare, Candidate, CompareSpec, InstanceCheck};
use psotune::tune::{export_run, ExportFormat};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The base model folder.
    #[arg(long, default_value = "models/emoji")]
    model: PathBuf,
    /// A `psotune tune` run directory to measure at its newest checkpoint (repeatable).
    #[arg(long)]
    run: Vec<PathBuf>,
    /// A LoRA file to measure on top of the base model (repeatable).
    #[arg(long)]
    lora: Vec<PathBuf>,
    /// Leave the base model itself out of the table.
    #[arg(long)]
    no_base: bool,
    /// The evaluator folder (default: MODEL/evaluator).
    #[arg(long)]
    evaluator: Option<PathBuf>,
    /// A labelled image folder (metadata.jsonl).
    #[arg(long, default_value = "assets/emoji")]
    data: PathBuf,
    /// Which metadata lines give the prompts, as key=value[,key=value...].
    #[arg(long, default_value = "style=twemoji,split=train", value_parser = parse_select)]
    prompts: BTreeMap<String, String>,
    /// Which images are the emoji-FID reference (default: the --prompts selection).
    #[arg(long, value_parser = parse_select)]
    reference: Option<BTreeMap<String, String>>,
    /// How many prompts (one per concept, a fixed random subset).
    #[arg(long, default_value_t = 256)]
    num_prompts: usize,
    /// Step counts, comma-separated (default: the model's own).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,
    /// Batch k of every measurement uses seed + k.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per sampling batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Write a PNG grid: one row per prompt, one column per table row.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Prompts (rows) in the grid.
    #[arg(long, default_value_t = 8)]
    grid_prompts: usize,
    /// Write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instance images (files or folders) for concept customization: adds
    /// the mean evaluator-feature similarity of --instance-prompt samples to them.
    #[arg(long, requires = "instance_prompt")]
    instance_images: Vec<PathBuf>,
    #[arg(long)]
    instance_prompt: Option<String>,
    /// A reward (inline TOML table, as `psotune pairs --reward`) to average
    /// over each row's samples, e.g. '{ kind = "colourfulness" }'.
    #[arg(long)]
    reward: Option<String>,
    /// Samples of --instance-prompt per table row.
    #[arg(long, default_value_t = 16)]
    instance_samples: usize,
}

/// `key=value,key=value` -> map.
pub fn parse_select(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let mut candidates = Vec::new();
    if !a.no_base {
        candidates.push(Candidate { label: "base".into(), lora: None });
    }
    // The runs' LoRAs, exported for sampling; removed however this ends.
    let tmp = psotune::scratch::ScratchDir::new("psotune-eval")?;
    for run in &a.run {
        let label = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run.display().to_string());
        let file = tmp.join(format!("{}-{label}.safetensors", candidates.len()));
        export_run(run, ExportFormat::Diffusers, &file, None).with_context(|| format!("reading the LoRA of run {}", run.display()))?;
        candidates.push(Candidate { label, lora: Some(file) });
    }
    for lora in &a.lora {
        candidates.push(Candidate { label: lora.display().to_string(), lora: Some(lora.clone()) });
    }
    if candidates.is_empty() {
        bail!("nothing to measure: give --run or --lora, or drop --no-base");
    }
    let instance = match &a.instance_prompt {
        Some(prompt) => {
            let mut images = Vec::new();
            for p in &a.instance_images {
                if p.is_dir() {
                    images.extend(list_images(p)?);
                } else {
                    images.push(p.clone());
                }
            }
            if images.is_empty() {
                bail!("--instance-prompt needs --instance-images");
            }
            Some(InstanceCheck { images, prompt: prompt.clone(), samples: a.instance_samples })
        }
        None => None,
    };
    let spec = CompareSpec {
        evaluator: a.evaluator.clone().unwrap_or_else(|| a.model.join("evaluator")),
        model: a.model,
        data: a.data,
        reference: a.reference.unwrap_or_else(|| a.prompts.clone()),
        prompts: a.prompts,
        num_prompts: a.num_prompts,
        steps: if a.steps.is_empty() { vec![None] } else { a.steps.iter().map(|s| Some(*s)).collect() },
        seed: a.seed,
        batch: a.batch,
        grid_prompts: a.grid_prompts,
        instance,
        reward: a.reward.as_deref().map(psotune::reward::RewardConfig::parse_inline).transpose()?,
    };
    let c = compare(&spec, &candidates, |line| eprintln!("{line}"))?;
    drop(tmp);
    println!("{} prompts, emoji-FID against {} reference images\n", c.prompts, c.reference_images);
    print!("{}", c.markdown());
    if let Some(path) = &a.grid {
        c.save_grid(path, 3)?;
        eprintln!("grid: {} (rows: {})", path.display(), c.grid_prompts.join("; "));
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&c.rows)?).with_context(|| path.display().to_string())?;
    }
    Ok(())
}
