//! Generates the lists of Twemoji PNG assets: every named one, and every one.
//!
//! `twemoji-assets` compiles its PNGs into `png::codes` / `png::names` as
//! constants plus lookup functions, but offers no way to iterate them. The
//! list it is generated from is its own `src/png/names.rs`, one
//! `png_name!(IDENT, "emoji", "label", U_CODES, "file.png");` line per name. We
//! find that file through `cargo metadata` (so vendored or relocated registries
//! work too) and turn it into `(emoji, label, file)` rows; the same is done for
//! `src/png/codes.rs` (`png_code!(U_CODES, "emoji", "label", "file.png");`, all
//! assets, some unnamed). The image bytes are still taken from the crate at
//! run time via `PngTwemojiAsset::from_emoji`.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let png_dir = twemoji_png_src()?;
    let mut out = String::new();
    for (file, macro_name, static_name) in [
        ("names.rs", "png_name!(", "TWEMOJI_NAMED"),
        ("codes.rs", "png_code!(", "TWEMOJI_ALL"),
    ] {
        let path = png_dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let rows = parse_rows(&text, macro_name)?;
        if rows.len() < 1000 {
            bail!("only {} assets parsed from {}", rows.len(), path.display());
        }
        out.push_str(&format!(
            "/// (emoji, label, file) for every `{macro_name}` line of twemoji-assets' {file}.\n\
             pub static {static_name}: &[(&str, &str, &str)] = &[\n"
        ));
        for (emoji, label, file) in rows {
            out.push_str(&format!("    ({emoji:?}, {label:?}, {file:?}),\n"));
        }
        out.push_str("];\n");
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR")?).join("twemoji_named.rs");
    std::fs::write(dest, out)?;
    Ok(())
}

/// Path of `src/png/` of the `twemoji-assets` package this build uses.
fn twemoji_png_src() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages = meta["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("no packages"))?;
    for p in packages {
        if p["name"] == "twemoji-assets" {
            let m = p["manifest_path"]
                .as_str()
                .ok_or_else(|| anyhow!("no manifest_path"))?;
            let dir = Path::new(m)
                .parent()
                .ok_or_else(|| anyhow!("bad manifest_path"))?;
            return Ok(dir.join("src").join("png"));
        }
    }
    bail!("twemoji-assets not found in cargo metadata")
}

/// Rows of `png_name!(IDENT, "emoji", "label", U_X, "file.png");` or
/// `png_code!(U_X, "emoji", "label", "file.png");` lines. The generator writes
/// labels without escaped quotes, so splitting on `"` is exact.
fn parse_rows(text: &str, macro_name: &str) -> Result<Vec<(String, String, String)>> {
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(macro_name)) {
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() != 7 {
            bail!("unexpected {macro_name} line: {line}");
        }
        rows.push((
            parts[1].to_string(),
            parts[3].to_string(),
            parts[5].to_string(),
        ));
    }
    Ok(rows)
}
