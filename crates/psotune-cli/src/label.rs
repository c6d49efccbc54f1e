//! `psotune label`: collect preference pairs in the browser
//! (psotune_label), or `--stats` on a labelled folder.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use psotune::pipeline::{LoadOptions, Pipeline};
use psotune_label::plan::{read_prompts, Setup};
use psotune_label::{Agreement, App, PipelineRender, ServeOptions, Store};

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// The model whose samples are judged.
    #[arg(long, required_unless_present = "stats")]
    model: Option<PathBuf>,
    /// A LoRA file applied to the model (diffusers/PEFT or kohya).
    #[arg(long)]
    lora: Option<PathBuf>,
    /// A file of prompts, one per line (# starts a comment line).
    #[arg(long, required_unless_present = "stats")]
    prompts: Option<PathBuf>,
    /// Output folder: pairs.jsonl (the manifest `[data] kind = "pairs"`
    /// reads), other.jsonl (ties and skips), images/. Rerun with the same
    /// folder to continue.
    #[arg(long, required_unless_present = "stats")]
    out: Option<PathBuf>,
    /// Address to listen on; anything but loopback lets others on the network in.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one).
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// Pairs per prompt, each with two fresh seeds.
    #[arg(long, default_value_t = 2)]
    pairs_per_prompt: usize,
    /// Sampling steps (default: the model's own).
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of the first sample; the pairs take the seeds after it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The name choices are recorded under when the page gives none.
    #[arg(long, default_value = "labeler")]
    labeler: String,
    /// How many labellers judge each pair (2 or more to measure agreement).
    #[arg(long, default_value_t = 1)]
    overlap: usize,
    /// Print labellers' counts and agreement for a labelled folder, and exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["model", "prompts", "out"])]
    stats: Option<PathBuf>,
}

pub fn run(a: LabelArgs) -> Result<()> {
    if let Some(dir) = &a.stats {
        if !dir.join("pairs.jsonl").is_file() {
            bail!("{}: no pairs.jsonl (is this a `psotune label --out` folder?)", dir.display());
        }
        let store = Store::open(dir)?;
        print!("{}", Agreement::of(store.labels()));
        return Ok(());
    }
    let (model, prompts, out) = (a.model.unwrap(), a.prompts.unwrap(), a.out.unwrap());
    if a.overlap == 0 {
        bail!("--overlap must be at least 1");
    }
    let setup = Setup {
        model: model.display().to_string(),
        lora: a.lora.as_ref().map(|p| p.display().to_string()),
        prompts: read_prompts(&prompts)?,
        pairs_per_prompt: a.pairs_per_prompt,
        steps: a.steps,
        seed: a.seed,
    };
    let app = App::open(&out, &setup, a.overlap, 8, &a.labeler)?;
    let mut pipe = Pipeline::load(&model, &LoadOptions::default()).with_context(|| model.display().to_string())?;
    if let Some(path) = &a.lora {
        pipe.load_lora(path, 1.0).with_context(|| format!("loading LoRA {}", path.display()))?;
    }
    let p = app.progress();
    eprintln!(
        "{} prompts x {} = {} pairs; {} complete, {} sampled (continuing {})",
        setup.prompts.len(),
        setup.pairs_per_prompt,
        p.total,
        p.complete,
        p.sampled,
        out.display()
    );
    let is_loopback = a.host == "127.0.0.1" || a.host == "localhost" || a.host == "::1";
    if !is_loopback {
        eprintln!("warning: listening on {}: anyone who can reach this machine can label and read the images", a.host);
    }
    let renderer = Box::new(PipelineRender { pipe, steps: a.steps });
    psotune_label::serve(app, renderer, &ServeOptions { host: a.host.clone(), port: a.port }, |addr| {
        println!("psotune label: open http://{addr}/ (Ctrl-C to stop; every choice is already saved)");
    })?;
    Ok(())
}
