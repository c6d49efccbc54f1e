//! Comparing models side by side: the base model and any number of
//! LoRAs on top of it, each at some step counts, all on the same prompts
//! and seeds, measured by one [`Judge`]. `psotune eval`, `psotune demo`
//! and the README's experiment tables are made by [`compare`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::judge::{Judge, Measures};
use super::prompts::PromptSet;
use super::sample::{sample_prompts, SampleSettings};
use crate::data::{describe_selection, load_image_batch, ImageFolder, ImageItem};
use crate::error::{Error, Result};
use crate::metrics::mean_cosine_similarity;
use crate::models::evaluator::Evaluator;
use crate::pipeline::{LoadOptions, Pipeline};
use crate::reward::{Reward, RewardConfig};
use crate::scratch::ScratchDir;

/// Grid rows given to the instance prompt when there is one.
const INSTANCE_ROWS: usize = 2;

/// A model to measure: the base model, or the base model with a LoRA.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub label: String,
    pub lora: Option<PathBuf>,
}

/// Concept customization: how close samples of `prompt` come to the
/// instance images (mean cosine similarity of evaluator features).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceCheck {
    pub images: Vec<PathBuf>,
    pub prompt: String,
    /// Samples of `prompt` per candidate and step count.
    pub samples: usize,
}

/// What to compare on.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSpec {
    pub model: PathBuf,
    pub evaluator: PathBuf,
    /// A labelled image folder (metadata.jsonl with `text`, `concept`,
    /// `subgroup`, `style`, ...).
    pub data: PathBuf,
    /// Which lines give the prompts (one per concept).
    pub prompts: BTreeMap<String, String>,
    /// Which images are the emoji-FID reference.
    pub reference: BTreeMap<String, String>,
    pub num_prompts: usize,
    /// Step counts to sample at (`None`: the model's own).
    pub steps: Vec<Option<usize>>,
    pub seed: u64,
    pub batch: usize,
    /// Prompts shown in the grid (its rows).
    pub grid_prompts: usize,
    pub instance: Option<InstanceCheck>,
    /// A reward to average over every row's samples (with their prompts).
    pub reward: Option<RewardConfig>,
}

/// One (candidate, step count) measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    pub label: String,
    pub steps: usize,
    pub measures: Measures,
    /// With an [`InstanceCheck`]: mean feature similarity to the instance images.
    pub instance_similarity: Option<f64>,
    /// With a reward: its mean over the samples.
    pub reward: Option<f64>,
}

/// The rows, and the grid images [G * columns, 3, S, S] in [-1, 1]: one
/// row per grid prompt, one column per row of the table.
pub struct Comparison {
    pub rows: Vec<CompareRow>,
    pub grid: Tensor,
    pub columns: usize,
    pub grid_prompts: Vec<String>,
    pub prompts: usize,
    pub reference_images: usize,
}

fn selected<'a>(folder: &'a ImageFolder, select: &BTreeMap<String, String>) -> Result<Vec<&'a ImageItem>> {
    let items: Vec<&ImageItem> = folder.items.iter().filter(|i| i.matches(select)).collect();
    if items.is_empty() {
        return Err(Error::data(&folder.root, None, format!("no images match {}", describe_selection(select))));
    }
    Ok(items)
}

/// Measure every candidate at every step count. `log` receives one line
/// per finished measurement.
pub fn compare(spec: &CompareSpec, candidates: &[Candidate], mut log: impl FnMut(&str)) -> Result<Comparison> {
    if candidates.is_empty() || spec.steps.is_empty() {
        return Err(Error::invalid("compare: nothing to measure (no candidates or no step counts)"));
    }
    let dev = Device::Cpu;
    let folder = ImageFolder::open(&spec.data)?;
    let reference = selected(&folder, &spec.reference)?;
    let judge = Judge::new(Evaluator::load(&spec.evaluator, &dev)?, &load_image_batch(&reference, &dev)?)?;
    let prompts = PromptSet::from_folder(&folder, &spec.prompts, spec.num_prompts, spec.seed)?;
    let instance_features = match &spec.instance {
        Some(check) => {
            let imgs = check.images.iter().map(|p| crate::pipeline::image::load_image(p, &dev)).collect::<Result<Vec<_>>>()?;
            if imgs.is_empty() {
                return Err(Error::invalid("instance check: no instance images"));
            }
            Some(judge.evaluator.features(&Tensor::stack(&imgs, 0)?)?)
        }
        None => None,
    };
    // A reward's working folder lives as long as the reward.
    let (_reward_dir, mut reward): (Option<ScratchDir>, Option<Box<dyn Reward>>) = match &spec.reward {
        Some(cfg) => {
            cfg.check_prompts(&prompts.prompts)?;
            let dir = ScratchDir::new("psotune-eval-reward")?;
            let reward = cfg.build(&dir, &dev)?;
            (Some(dir), Some(reward))
        }
        None => (None, None),
    };
    let g = spec.grid_prompts.min(prompts.len());
    let (mut rows, mut columns) = (Vec::new(), Vec::new());
    for cand in candidates {
        let mut pipe = Pipeline::load(&spec.model, &LoadOptions::default())?;
        if let Some(lora) = &cand.lora {
            pipe.load_lora(lora, 1.0)?;
        }
        for steps in &spec.steps {
            let settings = SampleSettings { steps: *steps, seed: spec.seed, batch: spec.batch, ..Default::default() };
            let images = sample_prompts(&pipe, &prompts.prompts, &settings, |_| {})?;
            let measures = judge.measure(&images, &prompts.categories)?;
            let mut column = images.narrow(0, 0, g)?;
            let instance_similarity = match (&spec.instance, &instance_features) {
                (Some(check), Some(feats)) => {
                    let batch = vec![check.prompt.clone(); check.samples.max(1)];
                    let s = SampleSettings { seed: spec.seed + 1_000_000, ..settings.clone() };
                    let samples = sample_prompts(&pipe, &batch, &s, |_| {})?;
                    // The grid shows the instance prompt first.
                    column = Tensor::cat(&[&samples.narrow(0, 0, INSTANCE_ROWS.min(samples.dim(0)?))?, &column], 0)?;
                    Some(mean_cosine_similarity(&judge.evaluator.features(&samples)?, feats)?)
                }
                _ => None,
            };
            let reward_mean = match reward.as_mut() {
                Some(r) => {
                    let mut total = 0.0;
                    for (k, chunk) in prompts.prompts.chunks(spec.batch.max(1)).enumerate() {
                        let start = k * spec.batch.max(1);
                        let scores = r.score(&images.narrow(0, start, chunk.len())?, chunk)?;
                        total += scores.iter().map(|s| *s as f64).sum::<f64>();
                    }
                    Some(total / prompts.len() as f64)
                }
                None => None,
            };
            let steps = steps.unwrap_or(pipe.defaults.steps);
            let row = CompareRow { label: cand.label.clone(), steps, measures, instance_similarity, reward: reward_mean };
            log(&format!("{} at {} steps: emoji-FID {:.2}, prompt alignment {:.3}", row.label, steps, row.measures.emoji_fid, row.measures.prompt_alignment));
            rows.push(row);
            columns.push(column);
        }
    }
    let grid = Tensor::stack(&columns, 1)?.flatten(0, 1)?;
    Ok(Comparison {
        rows,
        grid,
        columns: columns.len(),
        grid_prompts: match &spec.instance {
            Some(check) => std::iter::repeat_n(check.prompt.clone(), INSTANCE_ROWS.min(check.samples.max(1))).chain(prompts.prompts[..g].iter().cloned()).collect(),
            None => prompts.prompts[..g].to_vec(),
        },
        prompts: prompts.len(),
        reference_images: reference.len(),
    })
}

impl Comparison {
    /// A Markdown table of the rows (style scores for every style the
    /// evaluator knows, in the order given).
    pub fn markdown(&self) -> String {
        let styles: Vec<String> = self.rows.first().map(|r| r.measures.style_scores.keys().cloned().collect()).unwrap_or_default();
        let instance = self.rows.iter().any(|r| r.instance_similarity.is_some());
        let reward = self.rows.iter().any(|r| r.reward.is_some());
        let mut s = String::from("| model | steps | emoji-FID | prompt alignment |");
        for st in &styles {
            s.push_str(&format!(" {st} score |"));
        }
        s.push_str(" sharpness |");
        if instance {
            s.push_str(" instance similarity |");
        }
        if reward {
            s.push_str(" mean reward |");
        }
        s.push('\n');
        s.push_str(&"|---".repeat(5 + styles.len() + instance as usize + reward as usize));
        s.push_str("|\n");
        for r in &self.rows {
            let m = &r.measures;
            s.push_str(&format!("| {} | {} | {:.2} | {:.3} |", r.label, r.steps, m.emoji_fid, m.prompt_alignment));
            for st in &styles {
                s.push_str(&format!(" {:.3} |", m.style_scores.get(st).copied().unwrap_or(f64::NAN)));
            }
            s.push_str(&format!(" {:.4} |", m.sharpness));
            if instance {
                s.push_str(&r.instance_similarity.map_or(" - |".into(), |v| format!(" {v:.3} |")));
            }
            if reward {
                s.push_str(&r.reward.map_or(" - |".into(), |v| format!(" {v:.4} |")));
            }
            s.push('\n');
        }
        s
    }

    /// Write the grid: rows = grid prompts, columns = table rows.
    pub fn save_grid(&self, path: &Path, scale: usize) -> Result<()> {
        let unit = ((self.grid.clamp(-1f32, 1f32)? + 1.0)? / 2.0)?;
        crate::pipeline::image::save_grid(&unit, self.columns, scale, path)
    }
}
