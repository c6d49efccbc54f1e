//! The dataset files next to the images: concepts.json, holdout.json,
//! metadata.jsonl. All maps are BTreeMaps and all lists sorted, so the files
//! are byte-identical on every run.

use crate::caption::caption;
use crate::sources::{Entry, Style};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
pub struct Concept {
    /// Canonical name: OpenMoji's annotation, else Twemoji's label, else Noto's.
    pub name: String,
    pub caption: String,
    pub group: String,
    pub subgroup: String,
    pub styles: Vec<&'static str>,
    /// Each set's own name, where it differs from `name`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub style_names: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

fn first_non_empty<'a>(options: impl IntoIterator<Item = Option<&'a str>>) -> String {
    options
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Merges the entries of all styles into one record per concept key.
pub fn concepts(entries: &[Entry]) -> BTreeMap<String, Concept> {
    let mut by_key: BTreeMap<&str, BTreeMap<Style, &Entry>> = BTreeMap::new();
    for e in entries {
        by_key.entry(&e.key).or_default().insert(e.style, e);
    }
    by_key
        .into_iter()
        .map(|(key, styles)| {
            let get = |s: Style| styles.get(&s).copied();
            let (tw, no, om) = (get(Style::Twemoji), get(Style::Noto), get(Style::OpenMoji));
            let name = first_non_empty([om, tw, no].map(|e| e.map(|e| e.name.as_str())));
            // Noto's category names are the display names; OpenMoji's are mapped to them
            let group = first_non_empty([no, om].map(|e| e.map(|e| e.group.as_str())));
            let subgroup = first_non_empty([no, om].map(|e| e.map(|e| e.subgroup.as_str())));
            let style_names = styles
                .values()
                .filter(|e| !e.name.is_empty() && e.name != name)
                .map(|e| (e.style.as_str(), e.name.clone()))
                .collect();
            let concept = Concept {
                caption: caption(&name),
                name,
                group,
                subgroup,
                styles: styles.keys().map(|s| s.as_str()).collect(),
                style_names,
                tags: om.map(|e| e.tags.clone()).unwrap_or_default(),
            };
            (key.to_string(), concept)
        })
        .collect()
}

/// Candidates for held-out concepts, in order of preference: visually distinct
/// animals, food and objects with no near-twin in the base set. The first
/// `HOLDOUT_COUNT` that all three styles draw are held out.
const HOLDOUT_CANDIDATES: &[&str] = &[
    "1f419", // octopus
    "1f427", // penguin
    "1f98b", // butterfly
    "1f34d", // pineapple
    "1f335", // cactus
    "1f3b8", // guitar
    "1f680", // rocket
    "1f344", // mushroom
    "1f9c1", // cupcake
    "1f3a9", // top hat
    "1f6f8", // flying saucer
];
pub const HOLDOUT_COUNT: usize = 8;

pub fn holdout(concepts: &BTreeMap<String, Concept>) -> Vec<String> {
    HOLDOUT_CANDIDATES
        .iter()
        .filter(|k| {
            concepts
                .get(**k)
                .is_some_and(|c| c.styles.len() == Style::ALL.len())
        })
        .take(HOLDOUT_COUNT)
        .map(|k| k.to_string())
        .collect()
}

#[derive(Serialize)]
pub struct MetadataLine<'a> {
    pub file_name: String,
    pub text: &'a str,
    pub style: &'static str,
    pub concept: &'a str,
    pub name: &'a str,
    pub group: &'a str,
    pub subgroup: &'a str,
    /// "holdout" for the held-out concepts, else "train".
    pub split: &'static str,
    /// "val" for about a tenth of the concepts (all their styles), else
    /// "fit": the evaluator validates on "val", and style transfer tunes on
    /// "fit" and measures on "val".
    pub fold: &'static str,
}

/// The fold of a concept; the same rule as psotune's
/// `models::evaluator::is_validation_concept(concept, 0.1)` (FNV-1a, then
/// the splitmix64 finaliser), so the dataset and the evaluator agree
/// without this tool depending on psotune. Tests on both sides pin the
/// same concepts.
pub fn fold(concept: &str) -> &'static str {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in concept.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    if ((h >> 11) as f64 / (1u64 << 53) as f64) < 0.1 {
        "val"
    } else {
        "fit"
    }
}

pub fn file_name(style: Style, key: &str) -> String {
    format!("{}/{key}.png", style.as_str())
}

/// metadata.jsonl: one line per image, styles in a fixed order, concepts sorted.
pub fn metadata(
    entries: &[Entry],
    concepts: &BTreeMap<String, Concept>,
    holdout: &[String],
) -> anyhow::Result<String> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| (a.style, &a.key).cmp(&(b.style, &b.key)));
    let mut out = String::new();
    for e in sorted {
        let Some(c) = concepts.get(&e.key) else {
            continue;
        };
        let line = MetadataLine {
            file_name: file_name(e.style, &e.key),
            text: &c.caption,
            style: e.style.as_str(),
            concept: &e.key,
            name: &c.name,
            group: &c.group,
            subgroup: &c.subgroup,
            split: if holdout.contains(&e.key) {
                "holdout"
            } else {
                "train"
            },
            fold: fold(&e.key),
        };
        out.push_str(&serde_json::to_string(&line)?);
        out.push('\n');
    }
    Ok(out)
}

pub const LICENSES_MD: &str = r#"# Licences and attributions of the emoji dataset

The images here are adaptations of three emoji sets: each was composited on
a white background and area-resampled to a small square size by
`tools/fetch_emoji.sh` of psotune. Captions and groups are derived from the
names and annotations shipped with the sets. Each image keeps the licence of
the set it comes from (the `style` field of `metadata.jsonl` and the folder
name say which).

## twemoji/ — Twemoji

- Graphics: Copyright Twitter, Inc and other contributors (Twemoji, maintained
  by the jdecked/twemoji community fork), licensed under
  CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
- Taken from the Rust crate `twemoji-assets` 1.5.1+17.0.2 (crate code MIT,
  by Tim Hesse); its emoji names come from Emojibase (MIT).

## noto/ — Noto Color Emoji

- Graphics: Copyright Google Inc., Noto Emoji, licensed under the
  Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0).
- Taken from the npm package `emoji-datasource-google` 16.0.0 (64 px PNGs);
  names and categories from its `emoji.json` (emoji-data by Cal Henderson,
  MIT).

## openmoji/ — OpenMoji

- Graphics and data: OpenMoji, the open-source emoji and icon project,
  https://openmoji.org/, licensed under CC-BY-SA 4.0
  (https://creativecommons.org/licenses/by-sa/4.0/). The resized images in
  `openmoji/` are adaptations and are shared under the same licence,
  CC-BY-SA 4.0.
- Taken from the npm package `openmoji` 17.0.0 (`color/svg`, rasterised with
  the `resvg` crate); annotations, tags and groups from `data/openmoji.csv`.

## The index files

`metadata.jsonl`, `concepts.json` and `holdout.json` combine names from all
three sources (Emojibase / CLDR names, emoji-datasource names, OpenMoji
annotations and tags). OpenMoji's tags are CC-BY-SA 4.0 data.
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Source;

    fn entry(style: Style, key: &str, name: &str, group: &str) -> Entry {
        Entry {
            style,
            key: key.into(),
            name: name.into(),
            group: group.into(),
            subgroup: String::new(),
            tags: vec![],
            source: Source::Bytes(&[]),
        }
    }

    #[test]
    fn merges_names_and_groups_across_styles() {
        let entries = vec![
            entry(Style::Twemoji, "1f436", "dog face", ""),
            entry(Style::Noto, "1f436", "dog face", "Animals & Nature"),
            entry(Style::OpenMoji, "1f436", "dog face", "Animals & Nature"),
            entry(Style::Noto, "1f1ea-1f1ec", "Egypt Flag", "Flags"),
            entry(Style::Twemoji, "1f1ea-1f1ec", "flag: Egypt", ""),
        ];
        let c = concepts(&entries);
        assert_eq!(c["1f436"].styles, vec!["twemoji", "noto", "openmoji"]);
        assert_eq!(c["1f436"].caption, "an emoji of a dog face");
        assert!(c["1f436"].style_names.is_empty());
        let flag = &c["1f1ea-1f1ec"];
        assert_eq!(flag.name, "flag: Egypt");
        assert_eq!(flag.group, "Flags");
        assert_eq!(flag.style_names["noto"], "Egypt Flag");
        assert_eq!(flag.caption, "an emoji of the flag of Egypt");

        let meta = metadata(&entries, &c, &["1f436".to_string()]).unwrap();
        let first = meta.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"file_name":"twemoji/1f1ea-1f1ec.png","text":"an emoji of the flag of Egypt","style":"twemoji","concept":"1f1ea-1f1ec","name":"flag: Egypt","group":"Flags","subgroup":"","split":"train","fold":"fit"}"#
        );
        assert!(meta.lines().filter(|l| l.contains("\"holdout\"")).count() == 3);
    }

    #[test]
    fn folds_are_pinned() {
        // The same ids psotune's evaluator tests pin (is_validation_concept).
        for c in ["0023-20e3", "00a9", "1f0cf", "1f193", "1f1e6-1f1ee"] {
            assert_eq!(fold(c), "val", "{c}");
        }
        for c in ["002a-20e3", "002d", "0030-20e3"] {
            assert_eq!(fold(c), "fit", "{c}");
        }
    }
}
