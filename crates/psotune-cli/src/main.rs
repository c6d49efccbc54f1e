//! The `psotune` command: parse arguments, call the library, print errors
//! with their causes and exit non-zero.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod device;
mod eval;
mod label;
mod pairs;
mod sample;
mod tune;

#[derive(Parser)]
#[command(name = "psotune", version, about = "Tune timestep-distilled diffusion models with Pairwise Sample Optimization")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on the built-in emoji model: PSO style transfer, measured, with an HTML report.
    Demo(demo::DemoArgs),
    /// Generate images from a diffusers model folder.
    Sample(Box<sample::SampleArgs>),
    /// Fine-tune a model from a TOML run config (PSO, pso-hinge, diffusion-dpo, sft).
    Tune(tune::TuneArgs),
    /// Measure the base model and tuned runs side by side (emoji-FID, style, alignment, sharpness).
    Eval(Box<eval::EvalArgs>),
    /// Make offline preference pairs from the model's own samples ranked by a reward.
    Pairs(Box<pairs::PairsArgs>),
    /// Label pairs of the model's samples in the browser, for `[data] kind = "pairs"`.
    Label(Box<label::LabelArgs>),
    /// Export a run's checkpoint as a LoRA file (diffusers, kohya) or a merged UNet.
    Export(tune::ExportArgs),
}

fn main() -> ExitCode {
    psotune::threads::init();
    let cli = Cli::parse();
    // A misspelt PSOTUNE_SIMD, or a path this CPU lacks, stops here.
    if let Err(e) = psotune::simd::init_from_env() {
        eprintln!("error: PSOTUNE_SIMD: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Sample(args) => sample::run(*args),
        Command::Tune(args) => tune::run(args),
        Command::Export(args) => tune::export(args),
        Command::Eval(args) => eval::run(*args),
        Command::Pairs(args) => pairs::run(*args),
        Command::Label(args) => label::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
