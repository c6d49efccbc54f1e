//! Stage 5: the evaluator (psotune::models::evaluator), a small classifier
//! with a style head and a category (subgroup) head trained on all three
//! styles. Its features give emoji-FID, its heads the style score and the
//! prompt alignment that the report and psotune's experiments measure.
//! Written to OUT/evaluator (diffusers ignores folders that
//! model_index.json does not name).

use anyhow::{Context, Result};
use psotune::models::evaluator::{train_evaluator, EvaluatorTrainConfig};

use crate::stage::{begin, mark_done};
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let Some(dir) = begin(ctx, "evaluator")? else { return Ok(()) };
    let r = &ctx.recipe.evaluator;
    let cfg = EvaluatorTrainConfig { epochs: r.epochs, batch_size: r.batch, lr: r.lr, seed: r.seed, ..Default::default() };
    let out = ctx.out.join("evaluator");
    let report = train_evaluator(&ctx.data, &dir.join("run"), &out, &cfg).context("training the evaluator")?;
    eprintln!(
        "evaluator: validation style accuracy {:.3}, category accuracy {:.3} -> {}",
        report.val_style_accuracy,
        report.val_category_accuracy,
        out.display()
    );
    mark_done(&dir, &serde_json::to_value(&report)?)
}
