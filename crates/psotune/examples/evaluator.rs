//! Train the emoji evaluator, and check its emoji-FID on real images.
//!
//!     CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p psotune --example evaluator -- \
//!         train data/emoji runs/evaluator out/evaluator [--epochs N]
//!     CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p psotune --example evaluator -- \
//!         fid data/emoji out/evaluator
//!
//! `train` resumes from the newest checkpoint in the run directory when
//! called again. `fid` prints emoji-FID between the twemoji and noto
//! images, between two random halves of twemoji (which must be far
//! smaller), style scores and sharpness per style.

use std::path::Path;
use std::process::ExitCode;

use candle_core::Device;
use psotune::data::{load_image_batch, ImageFolder, ImageItem};
use psotune::metrics::{frechet_distance, sharpness, FeatureStats};
use psotune::models::evaluator::{train_evaluator, Evaluator, EvaluatorTrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["train", data, run, out, rest @ ..] => train(data, run, out, rest),
        ["fid", data, model] => fid(data, model),
        _ => Err("usage: evaluator train DATA RUN_DIR OUT_DIR [--epochs N] | evaluator fid DATA MODEL_DIR".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn train(data: &str, run: &str, out: &str, rest: &[&str]) -> Res {
    let mut cfg = EvaluatorTrainConfig::default();
    if let ["--epochs", n] = rest {
        cfg.epochs = n.parse()?;
    }
    let report = train_evaluator(Path::new(data), Path::new(run), Path::new(out), &cfg)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn fid(data: &str, model: &str) -> Res {
    let dev = Device::Cpu;
    let ev = Evaluator::load(Path::new(model), &dev)?;
    let folder = ImageFolder::open(Path::new(data))?;
    let of_style = |s: &str| -> Vec<&ImageItem> {
        folder.items.iter().filter(|i| i.field("style") == Some(s) && i.field("split") != Some("holdout")).collect()
    };
    let mut stats = Vec::new();
    for style in ["twemoji", "noto", "openmoji"] {
        let items = of_style(style);
        let images = load_image_batch(&items, &dev)?;
        let feats = ev.features(&images)?;
        let scores = ev.style_scores(&images, style)?;
        let mean_score = scores.iter().map(|s| *s as f64).sum::<f64>() / scores.len() as f64;
        println!("{style}: {} images, mean own-style score {mean_score:.3}, sharpness {:.4}", items.len(), sharpness(&images)?);
        stats.push((style, FeatureStats::from_tensor(&feats)?, feats));
    }
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        println!("emoji-FID {} vs {}: {:.3}", stats[i].0, stats[j].0, frechet_distance(&stats[i].1, &stats[j].1)?);
    }
    for (k, (style, _, feats)) in stats.iter().enumerate() {
        let n = feats.dim(0)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(k as u64));
        let half = |idx: &[usize]| -> Result<FeatureStats, Box<dyn std::error::Error>> {
            let ids = candle_core::Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &dev)?;
            Ok(FeatureStats::from_tensor(&feats.index_select(&ids, 0)?)?)
        };
        let (a, b) = order.split_at(n / 2);
        println!("emoji-FID {style} half vs half: {:.3}", frechet_distance(&half(a)?, &half(b)?)?);
    }
    Ok(())
}
