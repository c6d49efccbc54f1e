//! Stage 6: the report. Teacher (DDIM, with guidance) and student (LCM,
//! 1-4 steps) sample the same prompts at the same seeds; the evaluator
//! measures emoji-FID against the whole base set (Twemoji), prompt
//! alignment, the Twemoji style score and sharpness. Real Twemoji images of
//! the same concepts are measured too, as the floor that a model can reach
//! with this many images. Writes WORK/report/{report.json, report.md,
//! teacher-vs-student.png, student-4step.png}.
//!
//! Each row is cached in WORK/report/rows, so a killed report resumes at
//! the row it was drawing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use psotune::data::{load_image_batch, ImageFolder, ImageItem};
use psotune::eval::{sample_prompts, Judge, Measures, PromptSet, SampleSettings};
use psotune::models::evaluator::{Evaluator, EvaluatorReport, REPORT_FILE};
use psotune::pipeline::{LoadOptions, Pipeline};
use serde::{Deserialize, Serialize};

use crate::grid::save_grid;
use crate::stage::{begin, mark_done};
use crate::Ctx;

/// One measured model setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub label: String,
    pub model: String,
    pub sampler: String,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub measures: Measures,
    /// Wall-clock seconds per image of sampling (batch of `batch`).
    pub seconds_per_image: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub prompts: usize,
    pub reference_images: usize,
    pub rows: Vec<Row>,
    /// Student 4-step emoji-FID divided by the teacher's at its first step count.
    pub student4_over_teacher_fid: Option<f64>,
    pub evaluator: EvaluatorReport,
}

const GRID_SCALE: usize = 3;

pub fn run(ctx: &Ctx) -> Result<()> {
    let Some(dir) = begin(ctx, "report")? else { return Ok(()) };
    let r = &ctx.recipe.report;
    let rows_dir = dir.join("rows");
    std::fs::create_dir_all(&rows_dir)?;
    let dev = Device::Cpu;

    let folder = ImageFolder::open(&ctx.data)?;
    let base_select = BTreeMap::from([("style".to_string(), "twemoji".to_string()), ("split".to_string(), "train".to_string())]);
    let base: Vec<&ImageItem> = folder.items.iter().filter(|i| i.matches(&base_select)).collect();
    if base.is_empty() {
        bail!("{}: no base-set (twemoji, train) images", ctx.data.display());
    }
    let ev_dir = ctx.out.join("evaluator");
    let evaluator = Evaluator::load(&ev_dir, &dev).with_context(|| format!("{}: run the evaluator stage first", ev_dir.display()))?;
    let ev_report: EvaluatorReport = serde_json::from_str(&std::fs::read_to_string(ev_dir.join(REPORT_FILE))?)?;
    eprintln!("report: reference = {} base-set images", base.len());
    let judge = Judge::new(evaluator, &load_image_batch(&base, &dev)?)?;
    let prompts = PromptSet::from_folder(&folder, &base_select, r.prompts, r.seed)?;
    let g = r.grid_prompts.min(prompts.len());

    let mut rows = Vec::new();
    let mut columns: Vec<Tensor> = Vec::new();

    // The floor: real base-set images of the same concepts.
    let by_concept: BTreeMap<&str, &ImageItem> = base.iter().filter_map(|i| i.field("concept").map(|c| (c, *i))).collect();
    let real_items: Vec<&ImageItem> = prompts.concepts.iter().filter_map(|c| by_concept.get(c.as_str()).copied()).collect();
    let real = load_image_batch(&real_items, &dev)?;
    let measures = judge.measure(&real, &prompts.categories)?;
    rows.push(Row { label: "real".into(), model: "real Twemoji, same concepts".into(), sampler: "-".into(), steps: None, guidance: None, measures, seconds_per_image: None });
    columns.push(real.narrow(0, 0, g)?);

    let teacher_dir = ctx.work.join("teacher").join("model");
    let plans: Vec<(&str, &Path, &[usize])> = vec![("teacher", &teacher_dir, &r.teacher_steps), ("student", &ctx.out, &r.student_steps)];
    for (name, model_dir, steps_list) in plans {
        let mut pipe: Option<Pipeline> = None;
        for &steps in steps_list {
            let label = format!("{name}-{steps}");
            let (row_file, grid_file) = (rows_dir.join(format!("{label}.json")), rows_dir.join(format!("{label}-grid.safetensors")));
            if row_file.is_file() && grid_file.is_file() {
                rows.push(serde_json::from_str(&std::fs::read_to_string(&row_file)?)?);
                columns.push(psotune::nn::weights::read_safetensors(&grid_file)?.remove("grid").context("grid tensor")?);
                continue;
            }
            if pipe.is_none() {
                pipe = Some(Pipeline::load(model_dir, &LoadOptions::default()).with_context(|| model_dir.display().to_string())?);
            }
            let p = pipe.as_ref().expect("loaded above");
            let settings = SampleSettings { steps: Some(steps), seed: r.seed, batch: r.batch, ..Default::default() };
            let bar = crate::stage::counter_bar(prompts.len() as u64, &label);
            let start = Instant::now();
            let images = sample_prompts(p, &prompts.prompts, &settings, |n| bar.set_position(n as u64))?;
            let secs = start.elapsed().as_secs_f64() / prompts.len() as f64;
            bar.finish_and_clear();
            let row = Row {
                label: label.clone(),
                model: name.into(),
                sampler: format!("{:?}", p.defaults.sampler).to_lowercase(),
                steps: Some(steps),
                guidance: Some(p.defaults.guidance),
                measures: judge.measure(&images, &prompts.categories)?,
                seconds_per_image: Some(secs),
            };
            eprintln!("report: {label}: emoji-FID {:.2}, alignment {:.3}, {:.3} s/image", row.measures.emoji_fid, row.measures.prompt_alignment, secs);
            if name == "student" && steps == 4 {
                save_grid(&images.narrow(0, 0, 64.min(images.dim(0)?))?, 8, 2, &dir.join("student-4step.png"))?;
            }
            let grid = images.narrow(0, 0, g)?;
            psotune::nn::weights::write_safetensors(&[("grid".to_string(), grid.clone())].into_iter().collect(), &grid_file)?;
            std::fs::write(&row_file, serde_json::to_string_pretty(&row)?)?;
            rows.push(row);
            columns.push(grid);
        }
    }

    // One row per prompt, one column per model setting.
    let grid = Tensor::stack(&columns, 1)?.flatten(0, 1)?;
    save_grid(&grid, columns.len(), GRID_SCALE, &dir.join("teacher-vs-student.png"))?;
    std::fs::write(dir.join("grid-prompts.txt"), prompts.prompts[..g].join("\n") + "\n")?;

    let fid = |label: &str| rows.iter().find(|r| r.label == label).map(|r| r.measures.emoji_fid);
    let teacher_label = r.teacher_steps.first().map(|s| format!("teacher-{s}"));
    let ratio = match (fid("student-4"), teacher_label.as_deref().and_then(fid)) {
        (Some(s), Some(t)) if t > 0.0 => Some(s / t),
        _ => None,
    };
    let report = Report { prompts: prompts.len(), reference_images: base.len(), rows, student4_over_teacher_fid: ratio, evaluator: ev_report };
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    let md = markdown(&report, &prompts.prompts[..g], &columns_legend(r), judge.evaluator.config.categories.len());
    std::fs::write(dir.join("report.md"), &md)?;
    eprint!("{md}");
    mark_done(&dir, &serde_json::json!({ "prompts": report.prompts, "student4_over_teacher_fid": ratio }))
}

fn columns_legend(r: &crate::recipe::ReportRecipe) -> String {
    let mut cols = vec!["real Twemoji".to_string()];
    cols.extend(r.teacher_steps.iter().map(|s| format!("teacher {s} steps")));
    cols.extend(r.student_steps.iter().map(|s| format!("student {s} step{}", if *s == 1 { "" } else { "s" })));
    cols.join(" | ")
}

/// The tables and grid captions of report.md.
fn markdown(report: &Report, grid_prompts: &[String], legend: &str, categories: usize) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{} prompts (one per base-set concept, fixed seeds); emoji-FID against all {} base-set images.\n\n",
        report.prompts, report.reference_images
    ));
    s.push_str("| model | sampler | steps | emoji-FID (lower is better) | prompt alignment | Twemoji style score | sharpness | s / image |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in &report.rows {
        let m = &r.measures;
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.3} | {:.4} | {} |\n",
            r.model,
            r.sampler,
            r.steps.map_or("-".into(), |v| v.to_string()),
            m.emoji_fid,
            m.prompt_alignment,
            m.style_scores.get("twemoji").copied().unwrap_or(f64::NAN),
            m.sharpness,
            r.seconds_per_image.map_or("-".into(), |v| format!("{v:.4}")),
        ));
    }
    if let Some(x) = report.student4_over_teacher_fid {
        s.push_str(&format!("\nStudent 4-step emoji-FID / teacher emoji-FID = {x:.2} (target: at most 1.5).\n"));
    }
    let e = &report.evaluator;
    s.push_str(&format!(
        "\nEvaluator on {} validation images of {} concepts it never saw: style accuracy {:.3} ({}), category accuracy {:.3} over {} categories.\n",
        e.val_images,
        e.val_concepts,
        e.val_style_accuracy,
        e.val_style_accuracy_by_style.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", "),
        e.val_category_accuracy,
        categories,
    ));
    s.push_str(&format!("\nGrid columns: {legend}. Rows: {}.\n", grid_prompts.join("; ")));
    s
}
