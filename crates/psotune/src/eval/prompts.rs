//! Which prompts a measurement samples: captions of a labelled image
//! folder, one per concept, with the category (subgroup) the prompt
//! alignment score checks.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{describe_selection, ImageFolder, ImageItem};
use crate::error::{Error, Result};

/// Prompts with the category and concept each was taken from.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSet {
    pub prompts: Vec<String>,
    /// The `subgroup` of each prompt's concept (empty when unlabelled).
    pub categories: Vec<String>,
    pub concepts: Vec<String>,
}

impl PromptSet {
    /// The captions of the items whose manifest fields equal `select`, one
    /// per concept (the first listed), then at most `n` of them: a fixed
    /// shuffle (seeded by `seed`) keeps the choice the same in every run
    /// and unbiased across the folder's ordering.
    pub fn from_folder(folder: &ImageFolder, select: &BTreeMap<String, String>, n: usize, seed: u64) -> Result<Self> {
        let mut seen = BTreeSet::new();
        let mut chosen: Vec<&ImageItem> = Vec::new();
        for item in folder.items.iter().filter(|i| i.matches(select)) {
            let concept = item.field("concept").unwrap_or(&item.text).to_string();
            if seen.insert(concept) {
                chosen.push(item);
            }
        }
        if chosen.is_empty() {
            return Err(Error::data(&folder.root, None, format!("no captions match {}", describe_selection(select))));
        }
        chosen.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        chosen.truncate(n.max(1));
        Ok(PromptSet {
            prompts: chosen.iter().map(|i| i.text.clone()).collect(),
            categories: chosen.iter().map(|i| i.field("subgroup").unwrap_or_default().to_string()).collect(),
            concepts: chosen.iter().map(|i| i.field("concept").unwrap_or(&i.text).to_string()).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> ImageFolder {
        let item = |concept: &str, style: &str, sub: &str| {
            let mut extra = serde_json::Map::new();
            extra.insert("concept".into(), concept.into());
            extra.insert("style".into(), style.into());
            extra.insert("subgroup".into(), sub.into());
            ImageItem { path: format!("{style}/{concept}.png").into(), text: format!("an emoji of {concept}"), extra, source: "m".into(), line: Some(1) }
        };
        let items = vec![item("a", "x", "g1"), item("a", "y", "g1"), item("b", "x", "g2"), item("c", "y", "g3"), item("d", "x", "g1")];
        ImageFolder { root: "root".into(), items }
    }

    #[test]
    fn one_prompt_per_concept_of_the_selection() {
        let sel = BTreeMap::from([("style".to_string(), "x".to_string())]);
        let p = PromptSet::from_folder(&folder(), &sel, 10, 0).unwrap();
        let mut concepts = p.concepts.clone();
        concepts.sort();
        assert_eq!(concepts, ["a", "b", "d"]);
        for (c, g) in p.concepts.iter().zip(&p.categories) {
            assert_eq!(g, match c.as_str() { "b" => "g2", _ => "g1" });
        }
        let all = PromptSet::from_folder(&folder(), &BTreeMap::new(), 10, 0).unwrap();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn subsample_is_fixed_by_the_seed() {
        let none = BTreeMap::new();
        let a = PromptSet::from_folder(&folder(), &none, 2, 7).unwrap();
        assert_eq!(a, PromptSet::from_folder(&folder(), &none, 2, 7).unwrap());
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn empty_selection_is_an_error_naming_it() {
        let sel = BTreeMap::from([("style".to_string(), "z".to_string())]);
        let e = PromptSet::from_folder(&folder(), &sel, 10, 0).unwrap_err().to_string();
        assert!(e.contains("style = \"z\""), "{e}");
    }
}
