//! `psotune pairs`: make an offline preference set from the model's own
//! samples ranked by a reward (psotune::data::make_pairs), for
//! `[data] kind = "pairs"`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use psotune::data::{make_pairs, ImageFolder, PairsSpec};
use psotune::eval::PromptSet;
use psotune::pipeline::{LoadOptions, Pipeline};
use psotune::reward::RewardConfig;

#[derive(Args, Debug)]
pub struct PairsArgs {
    /// The model that draws the samples.
    #[arg(long, default_value = "models/emoji")]
    model: PathBuf,
    /// A file of prompts, one per line (or use --data and --prompts).
    #[arg(long, conflicts_with = "data")]
    prompt_file: Option<PathBuf>,
    /// A labelled image folder whose captions are the prompts.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which metadata lines of --data give prompts, key=value[,key=value...].
    #[arg(long, default_value = "", value_parser = crate::eval::parse_select)]
    prompts: BTreeMap<String, String>,
    /// At most this many prompts (a fixed random subset of --data's).
    #[arg(long, default_value_t = 500)]
    num_prompts: usize,
    /// The reward as an inline TOML table, e.g.
    /// '{ kind = "evaluator-style", evaluator = "models/emoji/evaluator", style = "noto" }'.
    #[arg(long)]
    reward: String,
    /// Samples per prompt; the best and worst make the pair.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Score gaps at or below this are ties (no pair).
    #[arg(long, default_value_t = 0.0)]
    min_margin: f64,
    /// Sampling steps (default: the model's own).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: pairs.jsonl and images/.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: PairsArgs) -> Result<()> {
    let prompts: Vec<String> = match (&a.prompt_file, &a.data) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| f.display().to_string())?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(a.num_prompts)
            .map(String::from)
            .collect(),
        (None, Some(d)) => PromptSet::from_folder(&ImageFolder::open(d)?, &a.prompts, a.num_prompts, a.seed)?.prompts,
        (None, None) => bail!("give --prompt-file or --data"),
    };
    if prompts.is_empty() {
        bail!("no prompts");
    }
    let cfg = RewardConfig::parse_inline(&a.reward)?;
    cfg.check_prompts(&prompts)?;
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let mut reward = cfg.build(&a.out, &Device::Cpu)?;
    let pipe = Pipeline::load(&a.model, &LoadOptions::default()).with_context(|| a.model.display().to_string())?;
    let spec = PairsSpec { samples_per_prompt: a.samples, seed: a.seed, min_margin: a.min_margin, steps: a.steps };
    let n = prompts.len();
    let s = make_pairs(&pipe, &prompts, reward.as_mut(), &spec, &a.out, |done| {
        if done % 50 == 0 || done == n {
            eprintln!("pairs: {done}/{n} prompts");
        }
    })?;
    println!(
        "{} pairs ({} ties) -> {}; mean {} of all samples {:.4}, chosen {:.4}, rejected {:.4}",
        s.pairs,
        s.ties,
        s.manifest.display(),
        reward.name(),
        s.mean_score,
        s.mean_chosen,
        s.mean_rejected
    );
    Ok(())
}
