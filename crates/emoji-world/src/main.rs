//! `emoji-world`: builds psotune's built-in model (models/emoji) from the
//! emoji dataset (tools/fetch_emoji.sh) in resumable stages:
//!
//! ```text
//! tokenizer  CLIP BPE cut to 8k merges         -> OUT/tokenizer
//! vae        AutoencoderKL 32x32x3 <-> 8x8x4   -> OUT/vae
//! teacher    UNet + text encoder, eps loss     -> OUT-teacher (DDIM, 25 steps)
//! distill    latent consistency distillation   -> OUT (LCM, 1-4 steps)
//! ship       weights stored as float16          -> OUT (23 MB)
//! evaluator  style + category classifier       -> OUT/evaluator
//! report     teacher vs student, measured       -> WORK/report
//! assets     the data subset the repo carries   -> ASSETS
//! ```
//!
//! Every stage checkpoints into WORK/<stage>/run and continues from there
//! when restarted; a finished stage is skipped.

mod assets;
mod configs;
mod dataset;
mod distill;
mod evaluator;
mod folder;
mod grid;
mod init;
mod recipe;
mod report;
mod ship;
mod stage;
mod teacher;
mod tokenizer;
mod vae;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stage {
    Tokenizer,
    Vae,
    Teacher,
    Distill,
    Ship,
    Evaluator,
    Report,
    Assets,
    All,
}

#[derive(Parser)]
#[command(about = "Build psotune's built-in emoji model, stage by stage (resumable)")]
struct Args {
    /// Stages to run, in order (`all` = every stage).
    #[arg(required = true)]
    stages: Vec<Stage>,
    /// The dataset made by tools/fetch_emoji.sh.
    #[arg(long, default_value = "data/emoji")]
    data: PathBuf,
    /// Run directories with checkpoints (resumable).
    #[arg(long, default_value = "runs/emoji-world")]
    work: PathBuf,
    /// The model folder to write.
    #[arg(long, default_value = "models/emoji")]
    out: PathBuf,
    /// Where the `assets` stage writes the dataset subset the repository carries.
    #[arg(long, default_value = "assets/emoji")]
    assets: PathBuf,
    /// A TOML recipe overriding the defaults of recipe.rs.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Print the resolved recipe and exit.
    #[arg(long)]
    print_recipe: bool,
}

pub struct Ctx {
    pub data: PathBuf,
    pub work: PathBuf,
    pub out: PathBuf,
    pub recipe: recipe::Recipe,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    // candle's element-wise pool busy-waits beside rayon's; on 2 cores that
    // made training steps ~4x slower (see psotune::threads).
    psotune::threads::init();
    let recipe: recipe::Recipe = match &args.recipe {
        Some(p) => toml::from_str(&std::fs::read_to_string(p).with_context(|| p.display().to_string())?)
            .with_context(|| format!("recipe {}", p.display()))?,
        None => recipe::Recipe::default(),
    };
    if args.print_recipe {
        print!("{}", toml::to_string(&recipe)?);
        return Ok(());
    }
    let ctx = Ctx { data: args.data, work: args.work, out: args.out, recipe };
    std::fs::create_dir_all(&ctx.work)?;
    let mut stages = args.stages.clone();
    if stages.contains(&Stage::All) {
        stages = vec![Stage::Tokenizer, Stage::Vae, Stage::Teacher, Stage::Distill, Stage::Ship, Stage::Evaluator, Stage::Report, Stage::Assets];
    }
    for stage in stages {
        match stage {
            Stage::Tokenizer => {
                let bpe = ctx.data.join("clip-bpe.txt");
                if !bpe.is_file() {
                    bail!("{} is missing: run tools/fetch_emoji.sh first", bpe.display());
                }
                let n = tokenizer::write_tokenizer(&bpe, configs::BPE_MERGES, configs::MAX_TOKENS, &ctx.out.join("tokenizer"))?;
                eprintln!("tokenizer: {n} tokens -> {}", ctx.out.join("tokenizer").display());
            }
            Stage::Vae => vae::run(&ctx)?,
            Stage::Teacher => teacher::run(&ctx)?,
            Stage::Distill => distill::run(&ctx)?,
            Stage::Ship => ship::run(&ctx)?,
            Stage::Evaluator => evaluator::run(&ctx)?,
            Stage::Report => report::run(&ctx)?,
            Stage::Assets => assets::run(&ctx, &args.assets)?,
            Stage::All => unreachable!("expanded above"),
        }
    }
    Ok(())
}
