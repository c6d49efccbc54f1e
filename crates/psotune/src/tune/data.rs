//! The training set of a run, prepared once before training: every data
//! file checked (file:line errors), target images encoded to VAE latents,
//! prompts encoded to text embeddings, and the list of examples with the
//! reference each may be paired with. Which example a global index means is
//! a pure function of the seed and the index ([`TrainSet::example_at`]), so
//! the data cursor saved in a checkpoint is just that index.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::{DataConfig, PairsFormat, RunConfig};
use std::path::PathBuf;

use crate::data::{check_image_size, list_images, ImageFolder, PairManifest, ParquetPairs, METADATA_FILE};
use crate::error::{Error, Result};
use crate::pipeline::image::load_image;
use crate::pipeline::{Pipeline, PromptEmbeds};

/// Where an example's references come from.
#[derive(Debug, Clone)]
pub enum ReferencePool {
    /// Dataset images (pairs: the rejected images), latents in order.
    Fixed(Vec<Tensor>),
    /// Sampled by the model: one prompt per reference (see references.rs).
    Sampled(Vec<String>),
}

/// One training example: a target, the prompt it is trained under, and the
/// references it may be paired with (indices into the pool).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub target: usize,
    pub prompt: usize,
    pub references: Vec<usize>,
}

/// What the loop trains on.
pub struct TrainSet {
    /// Target latents, each [C, h, w].
    pub targets: Vec<Tensor>,
    /// Distinct training prompts and their embeddings (batch 1 each).
    pub prompts: Vec<String>,
    pub embeds: Vec<PromptEmbeds>,
    pub examples: Vec<Example>,
    pub pool: ReferencePool,
    /// Default validation prompts for this task.
    pub validation_prompts: Vec<String>,
    seed: u64,
}

/// The data files of a task, read and checked before any model work.
pub enum TaskFiles {
    Style { folder: ImageFolder, references_per_caption: usize },
    Pairs(PairManifest),
    /// Pick-a-Pic parquet pairs (images resized to the model's size).
    ParquetPairs(ParquetPairs),
    /// Instance images with where each was listed (file, line) for errors.
    Concept { images: Vec<(PathBuf, PathBuf, Option<usize>)>, instance_prompt: String, class_prompt: String, num_class_images: usize },
}

impl TaskFiles {
    /// Open the task's data: manifests parsed, files present.
    pub fn open(cfg: &DataConfig) -> Result<Self> {
        Ok(match cfg {
            DataConfig::Style { images, select, references_per_caption, .. } => {
                TaskFiles::Style { folder: ImageFolder::open(images)?.select(select)?, references_per_caption: *references_per_caption }
            }
            DataConfig::Pairs { manifest, format } => match PairsFormat::of(manifest, *format) {
                PairsFormat::Jsonl => TaskFiles::Pairs(PairManifest::open(manifest)?),
                PairsFormat::Parquet => TaskFiles::ParquetPairs(ParquetPairs::open(manifest)?),
            },
            DataConfig::Concept { instance_dir, select, instance_prompt, class_prompt, num_class_images, .. } => TaskFiles::Concept {
                images: if instance_dir.join(METADATA_FILE).is_file() {
                    let folder = ImageFolder::open(instance_dir)?.select(select)?;
                    folder.items.into_iter().map(|i| (i.path, i.source, i.line)).collect()
                } else if !select.is_empty() {
                    return Err(Error::data(instance_dir, None, format!("data.select needs a {METADATA_FILE} here")));
                } else {
                    list_images(instance_dir)?.into_iter().map(|p| (p.clone(), p, None)).collect()
                },
                instance_prompt: instance_prompt.clone(),
                class_prompt: class_prompt.clone(),
                num_class_images: *num_class_images,
            },
            DataConfig::Online { .. } => return Err(Error::invalid("the online task has no fixed data (tune::online::run trains it)")),
        })
    }

    /// Every image opens and has the model's size.
    pub fn check_size(&self, width: u32, height: u32) -> Result<()> {
        match self {
            TaskFiles::Style { folder, .. } => folder.check_size(width, height),
            TaskFiles::Pairs(m) => m.check_size(width, height),
            // Any size: resized and cropped when encoded (JPEGs checked at open).
            TaskFiles::ParquetPairs(_) => Ok(()),
            TaskFiles::Concept { images, .. } => images.iter().try_for_each(|(p, src, line)| check_image_size(p, width, height, src, *line)),
        }
    }
}

fn index_of(prompts: &mut Vec<String>, p: &str) -> usize {
    match prompts.iter().position(|q| q == p) {
        Some(i) => i,
        None => {
            prompts.push(p.to_string());
            prompts.len() - 1
        }
    }
}

/// Images to latents in chunks (bounded memory), the posterior mean: the
/// cached latents of fixed data must not depend on a random draw.
fn encode_images(pipe: &Pipeline, paths: &[&std::path::Path]) -> Result<Vec<Tensor>> {
    encode_with(pipe, paths.len(), |i| load_image(paths[i], &Device::Cpu))
}

/// [`encode_images`] for `n` images that `load(i)` makes ([3, H, W] in [-1, 1]).
fn encode_with(pipe: &Pipeline, n: usize, load: impl Fn(usize) -> Result<Tensor>) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(n);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(8) {
        let imgs = chunk.iter().map(|i| load(*i)).collect::<Result<Vec<_>>>()?;
        let batch = Tensor::stack(&imgs, 0)?.to_device(&pipe.device)?.to_dtype(pipe.dtype)?;
        let lat = pipe.vae.latents_from_image(&batch, None)?.to_dtype(candle_core::DType::F32)?;
        for i in 0..chunk.len() {
            out.push(lat.get(i)?);
        }
    }
    Ok(out)
}

impl TrainSet {
    /// Encode the task's images and prompts with `pipe`.
    pub fn prepare(files: &TaskFiles, pipe: &Pipeline, cfg: &RunConfig) -> Result<Self> {
        let mut prompts = Vec::new();
        let mut examples = Vec::new();
        let (targets, pool, validation_prompts) = match files {
            TaskFiles::Style { folder, references_per_caption } => {
                // References are sampled per distinct caption.
                let mut ref_prompts = Vec::new();
                let mut by_caption: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                for item in &folder.items {
                    by_caption.entry(item.text.clone()).or_insert_with(|| {
                        (0..*references_per_caption)
                            .map(|_| {
                                ref_prompts.push(item.text.clone());
                                ref_prompts.len() - 1
                            })
                            .collect()
                    });
                }
                for (i, item) in folder.items.iter().enumerate() {
                    examples.push(Example { target: i, prompt: index_of(&mut prompts, &item.text), references: by_caption[&item.text].clone() });
                }
                let paths: Vec<&std::path::Path> = folder.items.iter().map(|i| i.path.as_path()).collect();
                (encode_images(pipe, &paths)?, ReferencePool::Sampled(ref_prompts), prompts.iter().take(4).cloned().collect())
            }
            TaskFiles::Pairs(m) => {
                for (i, item) in m.items.iter().enumerate() {
                    examples.push(Example { target: i, prompt: index_of(&mut prompts, &item.prompt), references: vec![i] });
                }
                let chosen: Vec<&std::path::Path> = m.items.iter().map(|i| i.chosen.as_path()).collect();
                let rejected: Vec<&std::path::Path> = m.items.iter().map(|i| i.rejected.as_path()).collect();
                let pool = ReferencePool::Fixed(encode_images(pipe, &rejected)?);
                (encode_images(pipe, &chosen)?, pool, prompts.iter().take(4).cloned().collect())
            }
            TaskFiles::ParquetPairs(p) => {
                for (i, item) in p.items.iter().enumerate() {
                    examples.push(Example { target: i, prompt: index_of(&mut prompts, &item.prompt), references: vec![i] });
                }
                let (w, h) = (pipe.defaults.width.unwrap_or(512) as u32, pipe.defaults.height.unwrap_or(512) as u32);
                let chosen = encode_with(pipe, p.items.len(), |i| p.image(i, true, w, h, &Device::Cpu))?;
                let pool = ReferencePool::Fixed(encode_with(pipe, p.items.len(), |i| p.image(i, false, w, h, &Device::Cpu))?);
                (chosen, pool, prompts.iter().take(4).cloned().collect())
            }
            TaskFiles::Concept { images, instance_prompt, class_prompt, num_class_images } => {
                let p = index_of(&mut prompts, instance_prompt);
                let refs: Vec<usize> = (0..*num_class_images).collect();
                for i in 0..images.len() {
                    examples.push(Example { target: i, prompt: p, references: refs.clone() });
                }
                let paths: Vec<&std::path::Path> = images.iter().map(|(p, _, _)| p.as_path()).collect();
                let pool = ReferencePool::Sampled(vec![class_prompt.clone(); *num_class_images]);
                (encode_images(pipe, &paths)?, pool, vec![instance_prompt.clone(), class_prompt.clone()])
            }
        };
        let embeds = prompts.iter().map(|p| pipe.encode_prompts(&[p.as_str()])).collect::<Result<Vec<_>>>()?;
        Ok(Self { targets, prompts, embeds, examples, pool, validation_prompts, seed: cfg.optim.seed })
    }

    /// The example at global index `n` and the reference it is paired with:
    /// each epoch visits every example once in a seeded order; the reference
    /// is drawn from the example's list by a hash of `n`.
    pub fn example_at(&self, n: u64) -> Result<(&Example, usize)> {
        let len = self.examples.len() as u64;
        if len == 0 {
            return Err(Error::invalid("the training set is empty"));
        }
        let (epoch, pos) = (n / len, (n % len) as usize);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed ^ splitmix(epoch)));
        let ex = &self.examples[order[pos]];
        let r = ex.references.get((splitmix(self.seed.wrapping_add(n)) % ex.references.len().max(1) as u64) as usize).copied().unwrap_or(0);
        Ok((ex, r))
    }
}

/// A 64-bit mixer (SplitMix64's finaliser) for deriving seeds from indices.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, refs: usize) -> TrainSet {
        let examples = (0..n).map(|i| Example { target: i, prompt: 0, references: (0..refs).collect() }).collect();
        TrainSet { targets: vec![], prompts: vec![], embeds: vec![], examples, pool: ReferencePool::Sampled(vec![]), validation_prompts: vec![], seed: 5 }
    }

    #[test]
    fn every_epoch_visits_every_example_once_in_a_seeded_order() {
        let s = set(7, 3);
        let epoch = |e: u64| -> Vec<usize> {
            let mut v: Vec<usize> = (0..7).map(|i| s.example_at(e * 7 + i).unwrap().0.target).collect();
            let order = v.clone();
            v.sort();
            assert_eq!(v, (0..7).collect::<Vec<_>>());
            order
        };
        assert_ne!(epoch(0), epoch(1), "a new order each epoch");
        // A pure function of the index: the data cursor is all a resume needs.
        assert_eq!(s.example_at(40).unwrap(), set(7, 3).example_at(40).unwrap());
        let refs: Vec<usize> = (0..60).map(|n| s.example_at(n).unwrap().1).collect();
        assert!(refs.iter().all(|r| *r < 3) && (0..3).all(|r| refs.contains(&r)));
        assert!(set(0, 1).example_at(0).is_err());
    }
}
