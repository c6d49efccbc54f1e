//! The `psotune` command: parse arguments, call the library, print errors
//! with their causes and exit non-zero.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod device;
mod sample;

#[derive(Parser)]
#[command(name = "psotune", version, about = "Tune timestep-distilled diffusion models with Pairwise Sample Optimization")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a diffusers model folder.
    Sample(sample::SampleArgs),
}

fn main() -> ExitCode {
    psotune::threads::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => sample::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
