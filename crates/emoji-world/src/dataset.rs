//! The emoji images held in memory (6k images of 32x32 are 75 MB as f32)
//! and a resumable shuffled order over them.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use psotune::data::{load_image_batch, ImageFolder, ImageItem};
use psotune::diffusion::NoiseRng;
use serde::{Deserialize, Serialize};

use crate::configs::IMAGE_SIZE;

pub struct EmojiSet {
    /// [N, 3, 32, 32] in [-1, 1].
    pub images: Tensor,
    pub items: Vec<ImageItem>,
}

impl EmojiSet {
    /// The training images of the given styles (all styles when empty);
    /// held-out concepts are never trained on.
    pub fn load(data: &Path, styles: &[&str]) -> Result<Self> {
        let folder = ImageFolder::open(data)?.filter("training images of the chosen styles", |i| {
            i.field("split") != Some("holdout") && (styles.is_empty() || styles.contains(&i.field("style").unwrap_or("")))
        })?;
        folder.check_size(IMAGE_SIZE as u32, IMAGE_SIZE as u32)?;
        let refs: Vec<&ImageItem> = folder.items.iter().collect();
        let images = load_image_batch(&refs, &Device::Cpu)?;
        Ok(EmojiSet { images, items: folder.items })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn batch(&self, idx: &[usize]) -> Result<Tensor> {
        Ok(self.images.index_select(&index_tensor(idx)?, 0)?)
    }
}

/// Row indices as the u32 tensor `index_select` takes.
pub fn index_tensor(idx: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &Device::Cpu)?)
}

/// Per-sample timesteps as the [B] f32 tensor the UNet takes.
pub fn timestep_tensor(t: &[f64]) -> Result<Tensor> {
    Ok(Tensor::from_vec(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), t.len(), &Device::Cpu)?)
}

/// Epoch-wise random permutations; its position is the checkpoint's data cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shuffler {
    n: usize,
    seed: u64,
    epoch: u64,
    pos: usize,
    #[serde(skip)]
    perm: Vec<usize>,
}

impl Shuffler {
    pub fn new(n: usize, seed: u64) -> Self {
        let mut s = Shuffler { n, seed, epoch: 0, pos: 0, perm: Vec::new() };
        s.perm = s.permutation();
        s
    }

    /// Continue from a saved cursor (the permutation is recomputed).
    pub fn restore(mut saved: Shuffler) -> Self {
        saved.perm = saved.permutation();
        saved
    }

    fn permutation(&self) -> Vec<usize> {
        let mut rng = NoiseRng::new(self.seed.wrapping_add(self.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let mut p: Vec<usize> = (0..self.n).collect();
        for i in (1..self.n).rev() {
            p.swap(i, rng.index(i + 1));
        }
        p
    }

    #[cfg(test)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next `b` indices, running into the next epoch when needed.
    pub fn next_batch(&mut self, b: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(b);
        while out.len() < b {
            if self.pos == self.n {
                self.epoch += 1;
                self.pos = 0;
                self.perm = self.permutation();
            }
            out.push(self.perm[self.pos]);
            self.pos += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffler_covers_each_epoch_and_resumes() {
        let mut s = Shuffler::new(5, 3);
        let mut first: Vec<usize> = s.next_batch(5);
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        s.next_batch(2);
        let saved: Shuffler = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        let mut resumed = Shuffler::restore(saved);
        assert_eq!(resumed.next_batch(7), s.next_batch(7));
        assert_eq!(s.epoch(), 2);
    }
}
