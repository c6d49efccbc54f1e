//! `psotune tune` and `psotune export`: parse, resolve the config, call the library.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use psotune::tune::{self, ExportFormat, RunConfig};

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// The run's TOML config (see examples/). Optional with --resume, which
    /// reads the run directory's own config.toml.
    config: Option<PathBuf>,
    /// Override a config value: `--set optim.lr=2e-4` (TOML value; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<config file name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Where to compute: cpu or cuda[:N] (`model.device`; also with
    /// --resume, so a run can move to another machine).
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: TuneArgs) -> Result<()> {
    let (mut cfg, dir, resume) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let path = dir.join(psotune::train::CONFIG_FILE);
            if args.config.is_some() || !args.set.is_empty() {
                bail!("--resume continues the run as {} says; it takes no CONFIG or --set", path.display());
            }
            (RunConfig::load(&path, &[])?, dir.clone(), true)
        }
        (None, Some(path)) => {
            let cfg = RunConfig::load(path, &args.set)?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
            (cfg, args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(stem)), false)
        }
        (None, None) => bail!("give a CONFIG.toml (or --resume RUN_DIR)"),
    };
    if let Some(d) = &args.device {
        psotune::pipeline::parse_device(d).context("--device")?;
        cfg.model.device = Some(d.clone());
    }
    if args.print_config {
        print!("{}", cfg.to_toml()?);
        return Ok(());
    }
    let summary = tune::run(&cfg, &dir, resume).with_context(|| format!("run {}", dir.display()))?;
    let loss = summary.final_loss.map_or("-".into(), |l| format!("{l:.5}"));
    println!(
        "trained {} steps (from {}) in {:.1} s, last loss {loss}; checkpoint {}",
        summary.steps,
        summary.resumed_from,
        summary.seconds,
        summary.last_checkpoint.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run directory written by `psotune tune`.
    run_dir: PathBuf,
    /// diffusers (PEFT, `pipe.load_lora_weights`) | kohya (ComfyUI, A1111) | merged (a full UNet folder).
    #[arg(long)]
    format: ExportFormat,
    /// Output file (LoRA formats) or directory (merged).
    #[arg(long)]
    out: PathBuf,
    /// Export this step's checkpoint instead of the newest.
    #[arg(long)]
    step: Option<u64>,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let written = tune::export_run(&args.run_dir, args.format, &args.out, args.step)?;
    println!("wrote {}", written.display());
    Ok(())
}
