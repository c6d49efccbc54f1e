//! Readers for the three emoji sets. Each yields one `Entry` per concept it
//! draws (default skin tone only; see `codepoints::is_toned_variant`).

use crate::codepoints::{is_toned_variant, key_from_emoji, key_from_hex};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod twemoji_list {
    include!(concat!(env!("OUT_DIR"), "/twemoji_named.rs"));
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Style {
    Twemoji,
    Noto,
    OpenMoji,
}

impl Style {
    pub const ALL: [Style; 3] = [Style::Twemoji, Style::Noto, Style::OpenMoji];

    pub fn as_str(self) -> &'static str {
        match self {
            Style::Twemoji => "twemoji",
            Style::Noto => "noto",
            Style::OpenMoji => "openmoji",
        }
    }
}

pub enum Source {
    /// PNG bytes compiled into `twemoji-assets`.
    Bytes(&'static [u8]),
    PngFile(PathBuf),
    SvgFile(PathBuf),
}

pub struct Entry {
    pub style: Style,
    pub key: String,
    /// The set's own name for it (empty when the set has none).
    pub name: String,
    pub group: String,
    pub subgroup: String,
    /// OpenMoji's `tags` and `openmoji_tags`, merged.
    pub tags: Vec<String>,
    pub source: Source,
}

/// Counts of what a reader dropped, for the progress report.
#[derive(Default, Debug)]
pub struct Skipped {
    pub toned: usize,
    pub duplicate: usize,
    pub missing: usize,
}

/// Every named Twemoji PNG (the `png::names` list), one per file and concept,
/// plus the unnamed ones (`png::codes` only) whose concept another set names:
/// twemoji-assets leaves a few emoji unnamed where its name source spells the
/// sequence with FE0F and the file without (keycaps, ©, ®, eye in speech
/// bubble); `named_elsewhere` recovers them.
pub fn twemoji(
    named_elsewhere: &std::collections::BTreeSet<String>,
) -> Result<(Vec<Entry>, Skipped)> {
    use twemoji_assets::png::PngTwemojiAsset;
    let mut by_key: BTreeMap<String, Entry> = BTreeMap::new();
    let mut files = std::collections::BTreeSet::new();
    let mut skipped = Skipped::default();
    let unnamed = twemoji_list::TWEMOJI_ALL.iter().filter(|r| {
        let key = key_from_emoji(r.0);
        r.1.is_empty() && !is_toned_variant(&key) && named_elsewhere.contains(&key)
    });
    for &(emoji, label, file) in twemoji_list::TWEMOJI_NAMED.iter().chain(unnamed) {
        let key = key_from_emoji(emoji);
        if is_toned_variant(&key) {
            skipped.toned += 1;
            continue;
        }
        // several names (aliases) point at one file: keep one entry per file
        if !files.insert(file) || by_key.contains_key(&key) {
            skipped.duplicate += 1;
            continue;
        }
        let Some(asset) = PngTwemojiAsset::from_emoji(emoji) else {
            skipped.missing += 1;
            continue;
        };
        let entry = Entry {
            style: Style::Twemoji,
            key: key.clone(),
            name: label.to_string(),
            group: String::new(),
            subgroup: String::new(),
            tags: Vec::new(),
            source: Source::Bytes(asset.data.0),
        };
        by_key.insert(key, entry);
    }
    Ok((by_key.into_values().collect(), skipped))
}

#[derive(serde::Deserialize)]
struct NotoRecord {
    name: Option<String>,
    unified: String,
    image: String,
    category: Option<String>,
    subcategory: Option<String>,
    #[serde(default)]
    has_img_google: bool,
}

/// Noto (emoji-datasource-google): the base entries of `emoji.json`; their
/// `skin_variations` are the toned variants we leave out.
pub fn noto(package: &Path) -> Result<(Vec<Entry>, Skipped)> {
    let path = package.join("emoji.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let records: Vec<NotoRecord> = serde_json::from_str(&text).context("parsing emoji.json")?;
    let mut by_key: BTreeMap<String, Entry> = BTreeMap::new();
    let mut skipped = Skipped::default();
    for r in records {
        let key = key_from_hex(&r.unified)?;
        if is_toned_variant(&key) {
            skipped.toned += 1;
            continue;
        }
        let file = package.join("img/google/64").join(&r.image);
        if !r.has_img_google || !file.is_file() {
            skipped.missing += 1;
            continue;
        }
        if by_key.contains_key(&key) {
            skipped.duplicate += 1;
            continue;
        }
        let name = r.name.unwrap_or_default();
        // emoji.json shouts ("DOG FACE"); a few names are already mixed case
        let name = if name.chars().any(|c| c.is_lowercase()) {
            name
        } else {
            name.to_lowercase()
        };
        by_key.insert(
            key.clone(),
            Entry {
                style: Style::Noto,
                key,
                name,
                group: r.category.unwrap_or_default(),
                subgroup: r.subcategory.unwrap_or_default(),
                tags: Vec::new(),
                source: Source::PngFile(file),
            },
        );
    }
    Ok((by_key.into_values().collect(), skipped))
}

/// Display name of an OpenMoji group slug, matching emoji-datasource's
/// category names so groups line up across the sets.
pub fn group_display(slug: &str) -> String {
    match slug {
        "smileys-emotion" => "Smileys & Emotion".into(),
        "people-body" => "People & Body".into(),
        "component" => "Component".into(),
        "animals-nature" => "Animals & Nature".into(),
        "food-drink" => "Food & Drink".into(),
        "travel-places" => "Travel & Places".into(),
        "activities" => "Activities".into(),
        "objects" => "Objects".into(),
        "symbols" => "Symbols".into(),
        "flags" => "Flags".into(),
        "extras-openmoji" => "Extras (OpenMoji)".into(),
        "extras-unicode" => "Extras (Unicode)".into(),
        other => other.to_string(),
    }
}

fn split_tags(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// OpenMoji: `data/openmoji.csv` rows without a `skintone`, drawn from
/// `color/svg/<hexcode>.svg`.
pub fn openmoji(package: &Path) -> Result<(Vec<Entry>, Skipped)> {
    let path = package.join("data/openmoji.csv");
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no column {name}"))
    };
    let (c_hex, c_group, c_sub, c_ann, c_tags, c_otags, c_tone) = (
        col("hexcode")?,
        col("group")?,
        col("subgroups")?,
        col("annotation")?,
        col("tags")?,
        col("openmoji_tags")?,
        col("skintone")?,
    );
    let mut by_key: BTreeMap<String, Entry> = BTreeMap::new();
    let mut skipped = Skipped::default();
    for row in reader.records() {
        let row = row?;
        let get = |i: usize| row.get(i).unwrap_or("");
        let hex = get(c_hex);
        let key = key_from_hex(hex)?;
        if !get(c_tone).is_empty() || is_toned_variant(&key) {
            skipped.toned += 1;
            continue;
        }
        let file = package.join("color/svg").join(format!("{hex}.svg"));
        if !file.is_file() {
            skipped.missing += 1;
            continue;
        }
        if by_key.contains_key(&key) {
            skipped.duplicate += 1;
            continue;
        }
        let group = get(c_group);
        let mut name = get(c_ann).to_string();
        if group.starts_with("extras") {
            // OpenMoji's own icons use slugs ("spouting-orca")
            name = name.replace('-', " ");
        }
        let mut tags: Vec<String> = split_tags(get(c_tags))
            .chain(split_tags(get(c_otags)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        tags.retain(|t| seen.insert(t.clone()));
        by_key.insert(
            key.clone(),
            Entry {
                style: Style::OpenMoji,
                key,
                name,
                group: group_display(group),
                subgroup: get(c_sub).to_string(),
                tags,
                source: Source::SvgFile(file),
            },
        );
    }
    Ok((by_key.into_values().collect(), skipped))
}
