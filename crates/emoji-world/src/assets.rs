//! Stage `assets`: the part of the dataset that the repository carries
//! (ASSETS, default assets/emoji), so that the demo, the examples and the
//! tests work on a fresh clone without tools/fetch_emoji.sh: every Twemoji
//! image (the base set: FID reference, prompts), every Noto image (the
//! style-transfer target) and the held-out concepts in all three styles
//! (concept customization), with their metadata lines verbatim and the
//! licences. OpenMoji, needed only to train the VAE and the evaluator, stays
//! out apart from the held-out concepts. About 6 MB.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};

use crate::Ctx;

/// Whether a metadata line belongs in the assets.
fn keep(line: &serde_json::Value) -> bool {
    let field = |k: &str| line.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    matches!(field("style"), "twemoji" | "noto") || field("split") == "holdout"
}

pub fn run(ctx: &Ctx, assets: &std::path::Path) -> Result<()> {
    let manifest = ctx.data.join("metadata.jsonl");
    let file = std::fs::File::open(&manifest).with_context(|| format!("{}: run tools/fetch_emoji.sh first", manifest.display()))?;
    std::fs::create_dir_all(assets)?;
    let tmp = assets.join("metadata.jsonl.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let (mut kept, mut copied) = (0, 0);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}:{}", manifest.display(), i + 1))?;
        if !keep(&v) {
            continue;
        }
        let Some(name) = v.get("file_name").and_then(|f| f.as_str()) else {
            bail!("{}:{}: no file_name", manifest.display(), i + 1);
        };
        let (from, to) = (ctx.data.join(name), assets.join(name));
        let same = std::fs::read(&to).ok() == Some(std::fs::read(&from).with_context(|| from.display().to_string())?);
        if !same {
            std::fs::create_dir_all(to.parent().expect("file_name has a folder"))?;
            std::fs::copy(&from, &to)?;
            copied += 1;
        }
        writeln!(out, "{line}")?;
        kept += 1;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, assets.join("metadata.jsonl"))?;
    for f in ["LICENSES.md", "holdout.json"] {
        std::fs::copy(ctx.data.join(f), assets.join(f))?;
    }
    eprintln!("assets: {kept} images ({copied} copied) -> {}", assets.display());
    Ok(())
}
