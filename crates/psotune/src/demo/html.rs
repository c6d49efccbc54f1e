//! The demo's `report.html`: one self-contained page (images are files
//! next to it) that shows what changed before it says it in numbers.

use std::path::Path;

use super::chart::{escape, line_chart, moving_average};
use crate::error::{Error, Result};
use crate::eval::Comparison;
use crate::tune::{StepMetrics, METRICS_FILE, SAMPLES_DIR};

pub struct PageInputs<'a> {
    pub run_dir: &'a Path,
    pub out: &'a Path,
    pub comparison: &'a Comparison,
    pub steps: u64,
    pub seconds: f64,
    /// What was trained ([`super::method_line`]).
    pub method: &'a str,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.45}\
h1{font-size:1.6em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}\
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img.grid{image-rendering:pixelated;max-width:100%}\
.chart .title{font-size:12px;fill:#333}.chart .tick{font-size:10px;fill:#666}.cols{display:flex;gap:1.5em;flex-wrap:wrap}\
figure{margin:0}figcaption{font-size:.85em;color:#555}code{background:#f4f4f4;padding:1px 4px}.big{font-size:1.15em}";

fn read_metrics(run_dir: &Path) -> Result<Vec<StepMetrics>> {
    let path = run_dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::data(&path, Some(i + 1), e.to_string())))
        .collect()
}

/// The row of `label` at `steps`, if measured.
fn find<'a>(c: &'a Comparison, label: &str, steps: usize) -> Option<&'a crate::eval::CompareRow> {
    c.rows.iter().find(|r| r.label == label && r.steps == steps)
}

pub fn page(p: &PageInputs) -> Result<String> {
    let c = p.comparison;
    let metrics = read_metrics(p.run_dir)?;
    let mut h = format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>psotune demo</title><style>{STYLE}</style></head><body>");
    h.push_str("<h1>psotune demo: a 4-step emoji model learns the Noto style with PSO</h1>");
    h.push_str(&format!(
        "<p>The built-in model was tuned for {} steps ({:.0} s on this machine) with Pairwise Sample Optimization: \
each Noto emoji is the preferred image and the model's own sample for the same caption the rejected one, \
so the model moves towards Noto relative to itself and keeps its few-step sampling. Trained: {}.</p>",
        p.steps, p.seconds, super::chart::escape(p.method)
    ));
    if let (Some(b), Some(t)) = (find(c, "base", 4), c.rows.iter().find(|r| r.label != "base" && r.steps == 4)) {
        let noto = |r: &crate::eval::CompareRow| r.measures.style_scores.get("noto").copied().unwrap_or(f64::NAN);
        h.push_str(&format!(
            "<p class=\"big\">At 4 steps: Noto style score <b>{:.2} → {:.2}</b>, emoji-FID to held-out Noto images <b>{:.1} → {:.1}</b>, \
sharpness {:.4} → {:.4}.</p>",
            noto(b),
            noto(t),
            b.measures.emoji_fid,
            t.measures.emoji_fid,
            b.measures.sharpness,
            t.measures.sharpness
        ));
    }
    let cols: Vec<String> = c.rows.iter().map(|r| format!("{} · {} step{}", r.label, r.steps, if r.steps == 1 { "" } else { "s" })).collect();
    h.push_str(&format!(
        "<h2>Same prompts, same seeds</h2><figure><img class=\"grid\" src=\"comparison.png\" alt=\"comparison grid\"><figcaption>Columns: {}. \
Rows (concepts no training step saw): {}.</figcaption></figure>",
        escape(&cols.join(" | ")),
        escape(&c.grid_prompts.join("; "))
    ));
    h.push_str(&format!(
        "<h2>Measured</h2><p>{} held-out Noto prompts; emoji-FID against the {} Noto images of those concepts (lower is closer); \
style scores and prompt alignment from the emoji evaluator; sharpness is the Laplacian variance.</p>",
        c.prompts, c.reference_images
    ));
    h.push_str(&markdown_table_to_html(&c.markdown()));

    if !metrics.is_empty() {
        let window = (metrics.len() / 20).max(1);
        let xs: Vec<f64> = metrics.iter().map(|m| m.step as f64).collect();
        let series = |ys: Vec<f64>| xs.iter().copied().zip(moving_average(&ys, window)).collect::<Vec<_>>();
        h.push_str("<h2>Training</h2><div class=\"cols\">");
        h.push_str(&line_chart("loss (moving average)", &series(metrics.iter().map(|m| m.loss).collect()), 440.0, 200.0));
        let acc: Vec<f64> = metrics.iter().map(|m| m.acc.unwrap_or(f64::NAN)).collect();
        if acc.iter().any(|a| a.is_finite()) {
            h.push_str(&line_chart("implicit accuracy (moving average)", &series(acc), 440.0, 200.0));
        }
        h.push_str("</div>");
    }
    let samples = p.run_dir.join(SAMPLES_DIR);
    let mut grids: Vec<String> = std::fs::read_dir(&samples)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".png")).collect())
        .unwrap_or_default();
    grids.sort();
    if !grids.is_empty() {
        let rel = p.run_dir.strip_prefix(p.out).unwrap_or(p.run_dir).join(SAMPLES_DIR);
        h.push_str("<h2>Validation samples during training</h2><div class=\"cols\">");
        for g in &grids {
            let src = rel.join(g);
            h.push_str(&format!(
                "<figure><img class=\"grid\" width=\"256\" src=\"{}\"><figcaption>{}</figcaption></figure>",
                escape(&src.to_string_lossy()),
                escape(g.trim_end_matches(".png"))
            ));
        }
        h.push_str("</div>");
    }
    h.push_str(&format!(
        "<h2>Use it</h2><p>The LoRA is in <code>pytorch_lora_weights.safetensors</code> (diffusers: <code>pipe.load_lora_weights(\"{0}\")</code>) \
and <code>emoji-noto-kohya.safetensors</code> (ComfyUI, A1111). Sample with it: \
<code>psotune sample --model models/emoji --lora {0}/pytorch_lora_weights.safetensors --prompt \"an emoji of a cat face\" --out samples</code>.</p></body></html>",
        escape(&p.out.to_string_lossy())
    ));
    Ok(h)
}

/// The comparison's Markdown table as an HTML table.
fn markdown_table_to_html(md: &str) -> String {
    let mut out = String::from("<table>");
    for (i, line) in md.lines().filter(|l| l.starts_with('|')).enumerate() {
        if i == 1 {
            continue; // the |---| separator
        }
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for cell in line.trim_matches('|').split('|') {
            out.push_str(&format!("<{tag}>{}</{tag}>", escape(cell.trim())));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_become_html() {
        let html = markdown_table_to_html("| a | b |\n|---|---|\n| 1 | <2> |\n");
        assert_eq!(html, "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;2&gt;</td></tr></table>");
    }
}
