//! Rewards from the emoji evaluator (crate::models::evaluator), the emoji
//! world's stand-ins for a style classifier and for CLIP-T:
//!
//! - [`StyleReward`]: the probability of one style (e.g. `noto`) under the
//!   style head;
//! - [`AlignmentReward`]: the probability of the prompt's category (emoji
//!   subgroup) under the category head. Which category a prompt means comes
//!   from [`PromptCategories`]: a `metadata.jsonl` (`text` -> `subgroup`)
//!   and/or an explicit map.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{check_scores, Reward, RewardError};
use crate::data::METADATA_FILE;
use crate::error::{Error, Result};
use crate::models::evaluator::Evaluator;
use crate::ops;

/// The style score: P(style | image).
#[derive(Debug)]
pub struct StyleReward {
    evaluator: Evaluator,
    index: usize,
    name: String,
}

impl StyleReward {
    /// Load the evaluator folder `dir` and score `style`, which it must know.
    pub fn load(dir: &Path, style: &str, device: &Device) -> Result<Self> {
        Self::new(Evaluator::load(dir, device)?, style)
    }

    pub fn new(evaluator: Evaluator, style: &str) -> Result<Self> {
        let name = format!("evaluator-style:{style}");
        let index = evaluator.style_index(style).ok_or_else(|| RewardError::Invalid {
            reward: name.clone(),
            msg: format!("the evaluator has no style `{style}` (it knows {})", evaluator.config.styles.join(", ")),
        })?;
        Ok(Self { evaluator, index, name })
    }
}

impl Reward for StyleReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, images: &Tensor, _prompts: &[String]) -> Result<Vec<f32>> {
        let probs = ops::softmax_last_dim(&self.evaluator.forward_batched(images)?.style_logits)?;
        let p = probs.narrow(1, self.index, 1)?.flatten_all()?.to_vec1::<f32>()?;
        check_scores(&self.name, p.into_iter().map(f64::from).collect(), images.dim(0)?)
    }
}

/// Which category (emoji subgroup) each prompt asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptCategories {
    map: BTreeMap<String, String>,
    /// Where the map came from, for the unknown-prompt error.
    source: String,
}

impl PromptCategories {
    /// `text` -> `subgroup` of every line of a `metadata.jsonl` (`path` is
    /// the file or the folder holding it). A line without either field is an
    /// error naming the line. A caption filed under several subgroups (the
    /// emoji sets disagree on a few: openmoji files "a donkey" under
    /// animals-nature, the others under animal-mammal) takes its most
    /// frequent one, the first listed on a tie.
    pub fn from_metadata(path: &Path) -> Result<Self> {
        let file: PathBuf = if path.is_dir() { path.join(METADATA_FILE) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        // caption -> [(subgroup, count)] in order of first appearance
        let mut votes: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::data(&file, Some(n), format!("invalid JSON: {e}")))?;
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).ok_or_else(|| Error::data(&file, Some(n), format!("missing string field `{k}`")));
            let (caption, category) = (field("text")?, field("subgroup")?);
            let list = votes.entry(caption.to_string()).or_default();
            match list.iter_mut().find(|(c, _)| c == category) {
                Some((_, count)) => *count += 1,
                None => list.push((category.to_string(), 1)),
            }
        }
        let map = votes
            .into_iter()
            .filter_map(|(caption, list)| {
                // max_by_key keeps the last maximum; reversed, the first listed wins ties
                let best = list.iter().rev().max_by_key(|(_, count)| *count)?.0.clone();
                Some((caption, best))
            })
            .collect();
        Ok(Self { map, source: file.display().to_string() })
    }

    /// An explicit prompt -> category map.
    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        Self { map, source: "reward.categories".into() }
    }

    /// `self` with `other`'s entries added (and winning where both have one).
    pub fn extended(mut self, other: PromptCategories) -> Self {
        self.map.extend(other.map);
        self.source = match (self.source.is_empty(), other.source.is_empty()) {
            (true, _) => other.source,
            (false, true) => self.source,
            (false, false) => format!("{} or {}", self.source, other.source),
        };
        self
    }

    pub fn get(&self, prompt: &str) -> Option<&str> {
        self.map.get(prompt).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Prompt alignment: P(category of the prompt | image).
#[derive(Debug)]
pub struct AlignmentReward {
    evaluator: Evaluator,
    /// prompt -> category index of the evaluator.
    index: HashMap<String, usize>,
    source: String,
}

pub const ALIGNMENT_NAME: &str = "evaluator-alignment";

impl AlignmentReward {
    pub fn load(dir: &Path, categories: PromptCategories, device: &Device) -> Result<Self> {
        Self::new(Evaluator::load(dir, device)?, categories)
    }

    /// Every category named by `categories` must be one the evaluator knows.
    pub fn new(evaluator: Evaluator, categories: PromptCategories) -> Result<Self> {
        let mut index = HashMap::with_capacity(categories.len());
        for (prompt, cat) in &categories.map {
            let k = evaluator.category_index(cat).ok_or_else(|| RewardError::Invalid {
                reward: ALIGNMENT_NAME.into(),
                msg: format!("prompt {prompt:?} maps to category `{cat}` (from {}), which the evaluator does not know", categories.source),
            })?;
            index.insert(prompt.clone(), k);
        }
        Ok(Self { evaluator, index, source: categories.source })
    }
}

impl Reward for AlignmentReward {
    fn name(&self) -> &str {
        ALIGNMENT_NAME
    }

    fn score(&mut self, images: &Tensor, prompts: &[String]) -> Result<Vec<f32>> {
        let n = images.dim(0)?;
        if prompts.len() != n {
            return Err(RewardError::Invalid { reward: ALIGNMENT_NAME.into(), msg: format!("{n} images but {} prompts", prompts.len()) }.into());
        }
        // Look every prompt up before running the network: an unknown one
        // is a config error, not something to find after a forward pass.
        let ks = prompts
            .iter()
            .map(|p| {
                self.index.get(p).copied().ok_or_else(|| {
                    Error::from(RewardError::UnknownPrompt { reward: ALIGNMENT_NAME.into(), prompt: p.clone(), source_of_map: self.source.clone() })
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        let probs = self.evaluator.category_probs(images)?.to_vec2::<f32>()?;
        check_scores(ALIGNMENT_NAME, probs.iter().zip(&ks).map(|(row, k)| row[*k] as f64).collect(), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::evaluator::{init_weights, EvaluatorConfig};
    use crate::scratch::ScratchDir;

    fn tiny_evaluator() -> Evaluator {
        let config = EvaluatorConfig {
            image_size: 8,
            in_channels: 3,
            block_channels: vec![8, 8],
            layers_per_block: 1,
            norm_num_groups: 4,
            styles: vec!["noto".into(), "twemoji".into()],
            categories: vec!["animal-mammal".into(), "food-fruit".into(), "keycap".into()],
        };
        let weights = init_weights(&config, 3).unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(weights.into_iter().collect(), candle_core::DType::F32, &Device::Cpu);
        Evaluator::new(vb, &config).unwrap()
    }

    fn tmp(tag: &str) -> ScratchDir {
        ScratchDir::new(&format!("psotune-reward-{tag}")).unwrap()
    }

    #[test]
    fn style_and_alignment_are_head_probabilities() {
        let ev = tiny_evaluator();
        let images = crate::diffusion::randn((3, 3, 8, 8), 1, candle_core::DType::F32, &Device::Cpu).unwrap().tanh().unwrap();
        let out = ev.forward(&images).unwrap();
        let style = ops::softmax_last_dim(&out.style_logits).unwrap().to_vec2::<f32>().unwrap();
        let cat = ops::softmax_last_dim(&out.category_logits).unwrap().to_vec2::<f32>().unwrap();

        let mut r = StyleReward::new(ev.clone(), "twemoji").unwrap();
        let prompts: Vec<String> = ["a cat", "an apple", "a cat"].iter().map(|s| s.to_string()).collect();
        let s = r.score(&images, &prompts).unwrap();
        for i in 0..3 {
            assert!((s[i] - style[i][1]).abs() < 1e-6);
        }
        assert!(matches!(StyleReward::new(ev.clone(), "openmoji"), Err(Error::Reward(RewardError::Invalid { .. }))));

        let map = BTreeMap::from([("a cat".to_string(), "animal-mammal".to_string()), ("an apple".to_string(), "food-fruit".to_string())]);
        let mut a = AlignmentReward::new(ev.clone(), PromptCategories::from_map(map)).unwrap();
        let s = a.score(&images, &prompts).unwrap();
        assert!((s[0] - cat[0][0]).abs() < 1e-6 && (s[1] - cat[1][1]).abs() < 1e-6 && (s[2] - cat[2][0]).abs() < 1e-6);
        // An unknown prompt is a typed error naming it.
        let e = a.score(&images, &["a cat".into(), "a rocket".into(), "a cat".into()]).unwrap_err();
        assert!(matches!(&e, Error::Reward(RewardError::UnknownPrompt { prompt, .. }) if prompt == "a rocket"), "{e}");
        assert!(e.to_string().contains("\"a rocket\"") && e.to_string().contains("reward.categories"), "{e}");
        // A category the evaluator lacks fails at build time.
        let bad = PromptCategories::from_map(BTreeMap::from([("x".to_string(), "vehicle".to_string())]));
        assert!(AlignmentReward::new(ev, bad).unwrap_err().to_string().contains("vehicle"));
    }

    #[test]
    fn categories_from_metadata_vote_and_name_bad_lines() {
        let d = tmp("meta");
        let good = "{\"file_name\":\"a.png\",\"text\":\"a cat\",\"subgroup\":\"animal-mammal\"}\n\
                    {\"file_name\":\"b.png\",\"text\":\"a cat\",\"subgroup\":\"animal-mammal\"}\n\n\
                    {\"file_name\":\"c.png\",\"text\":\"an apple\",\"subgroup\":\"food-fruit\"}\n";
        std::fs::write(d.join("metadata.jsonl"), good).unwrap();
        let c = PromptCategories::from_metadata(&d).unwrap();
        assert_eq!((c.len(), c.get("a cat"), c.get("an apple"), c.get("x")), (2, Some("animal-mammal"), Some("food-fruit"), None));
        let extra = PromptCategories::from_map(BTreeMap::from([("x".to_string(), "keycap".to_string())]));
        let both = c.extended(extra);
        assert_eq!(both.get("x"), Some("keycap"));
        assert!(both.source.contains("metadata.jsonl") && both.source.contains("reward.categories"));

        // A caption under two subgroups takes the more frequent one; a tie goes to the first listed.
        let votes = format!("{good}{{\"text\":\"a cat\",\"subgroup\":\"animals-nature\"}}\n{{\"text\":\"an apple\",\"subgroup\":\"food-drink\"}}\n");
        std::fs::write(d.join("metadata.jsonl"), votes).unwrap();
        let c = PromptCategories::from_metadata(&d.join("metadata.jsonl")).unwrap();
        assert_eq!((c.get("a cat"), c.get("an apple")), (Some("animal-mammal"), Some("food-fruit")));
        std::fs::write(d.join("metadata.jsonl"), "{\"text\":\"a cat\"}\n").unwrap();
        let e = PromptCategories::from_metadata(&d).unwrap_err().to_string();
        assert!(e.contains("metadata.jsonl:1") && e.contains("subgroup"), "{e}");
    }
}
