//! emoji-data: builds psotune's emoji dataset from unpacked registry packages.
//!
//!     emoji-data --noto DIR --openmoji DIR --out DIR [--size 32] [--jobs N]
//!
//! `tools/fetch_emoji.sh` fetches the packages and calls this; see
//! tools/README.md for the layout of the output.

mod caption;
mod codepoints;
mod dataset;
mod image_ops;
mod sources;

use anyhow::{bail, Context, Result};
use sources::{Entry, Source, Style};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct Args {
    noto: PathBuf,
    openmoji: PathBuf,
    out: PathBuf,
    size: usize,
    jobs: usize,
}

fn parse_args() -> Result<Args> {
    let mut noto = None;
    let mut openmoji = None;
    let mut out = None;
    let mut size = 32;
    let mut jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--noto" => noto = Some(PathBuf::from(val()?)),
            "--openmoji" => openmoji = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--size" => size = val()?.parse().context("--size")?,
            "--jobs" => jobs = val()?.parse().context("--jobs")?,
            "-h" | "--help" => {
                println!("emoji-data --noto DIR --openmoji DIR --out DIR [--size 32] [--jobs N]");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?}"),
        }
    }
    if !(8..=128).contains(&size) {
        bail!("--size must be within 8..=128");
    }
    Ok(Args {
        noto: noto.context("--noto DIR is required")?,
        openmoji: openmoji.context("--openmoji DIR is required")?,
        out: out.context("--out DIR is required")?,
        size,
        jobs: jobs.max(1),
    })
}

/// Writes `bytes` to `path` unless it already holds exactly them; returns
/// whether it wrote. Goes through a temporary file and a rename so an
/// interrupted run never leaves a truncated file behind.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

fn render(entry: &Entry, size: usize) -> Result<Vec<u8>> {
    let img = match &entry.source {
        Source::Bytes(b) => image_ops::decode_png_on_white(b)?,
        Source::PngFile(p) => image_ops::decode_png_on_white(&std::fs::read(p)?)?,
        // 8x supersampled, then the same area filter as the PNG sets
        Source::SvgFile(p) => {
            image_ops::render_svg_on_white(&std::fs::read(p)?, (size * 8) as u32)?
        }
    };
    image_ops::encode_png(&image_ops::area_resize(&img, size))
}

/// Renders every entry whose image file is missing, on `jobs` threads.
/// Returns (rendered, already present) per style.
fn render_all(
    entries: &[Entry],
    out: &Path,
    size: usize,
    jobs: usize,
) -> Result<Vec<(usize, usize)>> {
    let next = AtomicUsize::new(0);
    let counts = Mutex::new(vec![(0usize, 0usize); Style::ALL.len()]);
    let errors = Mutex::new(Vec::new());
    let total = entries.len();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(e) = entries.get(i) else { break };
                let path = out.join(dataset::file_name(e.style, &e.key));
                let fresh = !path.is_file();
                if fresh {
                    if let Err(err) = render(e, size).and_then(|png| write_if_changed(&path, &png))
                    {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{}: {err:#}", path.display()));
                    }
                }
                // counted under the lock so progress lines come out in order
                let mut c = counts.lock().unwrap();
                let slot = &mut c[e.style as usize];
                if fresh {
                    slot.0 += 1
                } else {
                    slot.1 += 1
                }
                let n = c.iter().map(|s| s.0 + s.1).sum::<usize>();
                if n % 1000 == 0 || n == total {
                    println!("  images {n}/{total}");
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        bail!("{} images failed, first: {}", errors.len(), errors[0]);
    }
    Ok(counts.into_inner().unwrap())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;

    // One output folder holds one size: refuse to mix.
    let manifest_path = args.out.join("dataset.json");
    if let Ok(old) = std::fs::read_to_string(&manifest_path) {
        let old: serde_json::Value = serde_json::from_str(&old)?;
        if old["size"].as_u64() != Some(args.size as u64) {
            bail!(
                "{} holds {}px images; use another OUT_DIR for --size {}",
                args.out.display(),
                old["size"],
                args.size
            );
        }
    }

    let mut entries: Vec<Entry> = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for style in [Style::Noto, Style::OpenMoji, Style::Twemoji] {
        let (list, skipped) = match style {
            Style::Noto => sources::noto(&args.noto),
            Style::OpenMoji => sources::openmoji(&args.openmoji),
            Style::Twemoji => sources::twemoji(&named),
        }
        .with_context(|| format!("reading {}", style.as_str()))?;
        named.extend(
            list.iter()
                .filter(|e| !e.name.is_empty())
                .map(|e| e.key.clone()),
        );
        println!(
            "{:9} {} concepts (left out: {} skin-tone variants, {} duplicates, {} without image)",
            style.as_str(),
            list.len(),
            skipped.toned,
            skipped.duplicate,
            skipped.missing
        );
        std::fs::create_dir_all(args.out.join(style.as_str()))?;
        entries.extend(list);
    }

    println!(
        "rendering {}x{} images on {} threads",
        args.size, args.size, args.jobs
    );
    let counts = render_all(&entries, &args.out, args.size, args.jobs)?;

    let concepts = dataset::concepts(&entries);
    let holdout = dataset::holdout(&concepts);
    if holdout.len() < dataset::HOLDOUT_COUNT {
        eprintln!(
            "warning: only {} held-out concepts found in all styles",
            holdout.len()
        );
    }
    let shared = concepts
        .values()
        .filter(|c| c.styles.len() == Style::ALL.len())
        .count();

    let holdout_json: Vec<serde_json::Value> = holdout
        .iter()
        .map(|k| {
            let c = &concepts[k];
            serde_json::json!({"concept": k, "name": c.name, "caption": c.caption, "group": c.group})
        })
        .collect();
    let mut per_style = serde_json::Map::new();
    for (style, (new, old)) in Style::ALL.iter().zip(&counts) {
        per_style.insert(style.as_str().into(), (new + old).into());
    }
    let manifest = serde_json::json!({
        "size": args.size,
        "images": per_style,
        "concepts": concepts.len(),
        "concepts_in_all_styles": shared,
        "holdout": holdout,
        "sources": {
            "twemoji": "crate twemoji-assets 1.5.1+17.0.2 (png::names, 72x72 PNG)",
            "noto": "npm emoji-datasource-google 16.0.0 (img/google/64)",
            "openmoji": "npm openmoji 17.0.0 (color/svg, rasterised with resvg 0.49)"
        },
        "resampling": "composited on white in sRGB, area filter in linear light; SVG rendered at 8x first",
        "skin_tones": "default (yellow) tone only"
    });
    let files = [
        (
            "metadata.jsonl",
            dataset::metadata(&entries, &concepts, &holdout)?,
        ),
        (
            "concepts.json",
            serde_json::to_string_pretty(&concepts)? + "\n",
        ),
        (
            "holdout.json",
            serde_json::to_string_pretty(&holdout_json)? + "\n",
        ),
        ("LICENSES.md", dataset::LICENSES_MD.to_string()),
        (
            "dataset.json",
            serde_json::to_string_pretty(&manifest)? + "\n",
        ),
    ];
    for (name, text) in files {
        write_if_changed(&args.out.join(name), text.as_bytes())?;
    }

    println!("done: {}", args.out.display());
    for (style, (new, old)) in Style::ALL.iter().zip(&counts) {
        println!(
            "  {:9} {:5} images ({new} new, {old} already there)",
            style.as_str(),
            new + old
        );
    }
    println!(
        "  concepts {} (in all three styles: {shared}), held out: {}",
        concepts.len(),
        holdout.len()
    );
    Ok(())
}
