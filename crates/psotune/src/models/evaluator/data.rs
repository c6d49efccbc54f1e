//! The labelled images the evaluator trains on: an image folder whose
//! `metadata.jsonl` lines carry `style`, `concept`, `subgroup` and `split`
//! (the layout `tools/fetch_emoji.sh` writes), held in memory as one f32
//! buffer (6,325 emoji at 32x32 are 78 MB).

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{ImageFolder, ImageItem};
use crate::error::{Error, Result};
use crate::pipeline::image::load_image;

/// Whether `concept` belongs to the validation side of a split that puts
/// about `fraction` of all concepts there. Decided by a hash of the concept
/// id alone, so every style of a concept lands on the same side (a
/// classifier must not be validated on a concept it saw in another style)
/// and the split is the same in every run and every tool that asks.
pub fn is_validation_concept(concept: &str, fraction: f64) -> bool {
    // FNV-1a, then the splitmix64 finaliser: FNV's low bits alone are not
    // uniform enough for short ids that differ in one character.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in concept.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// One usable manifest entry.
#[derive(Debug, Clone)]
pub(crate) struct Labeled<'a> {
    pub item: &'a ImageItem,
    pub style: usize,
    pub category: usize,
    pub concept: &'a str,
}

/// A string field every evaluator training line needs, or an error naming
/// the manifest line.
fn field<'a>(item: &'a ImageItem, key: &str) -> Result<&'a str> {
    item.field(key).ok_or_else(|| Error::data(&item.source, item.line, format!("missing string field `{key}`")))
}

/// The sorted distinct `subgroup` values of all items (the category classes).
pub(crate) fn category_names(folder: &ImageFolder) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for item in &folder.items {
        names.insert(field(item, "subgroup")?.to_string());
    }
    Ok(names.into_iter().collect())
}

/// The items to train or validate on (those whose `split` is not
/// `holdout`), with their class indices. A style outside `styles` is an
/// error naming the line (a typo would otherwise drop a whole style).
pub(crate) fn labeled_items<'a>(folder: &'a ImageFolder, styles: &[String], categories: &[String]) -> Result<Vec<Labeled<'a>>> {
    let mut out = Vec::new();
    for item in &folder.items {
        if field(item, "split")? == "holdout" {
            continue;
        }
        let s = field(item, "style")?;
        let style = styles.iter().position(|x| x == s).ok_or_else(|| {
            Error::data(&item.source, item.line, format!("style `{s}` is not one of the configured styles ({})", styles.join(", ")))
        })?;
        let g = field(item, "subgroup")?;
        let category = categories
            .iter()
            .position(|x| x == g)
            .ok_or_else(|| Error::data(&item.source, item.line, format!("subgroup `{g}` is not a known category")))?;
        out.push(Labeled { item, style, category, concept: field(item, "concept")? });
    }
    Ok(out)
}

/// Images in memory, [N, 3, S, S] row-major in [-1, 1], with labels.
pub(crate) struct ImageSet {
    pub pixels: Vec<f32>,
    pub styles: Vec<usize>,
    pub categories: Vec<usize>,
    pub size: usize,
}

impl ImageSet {
    pub fn load(items: &[Labeled], size: usize) -> Result<Self> {
        let plane = 3 * size * size;
        let mut pixels = Vec::with_capacity(items.len() * plane);
        for l in items {
            let t = load_image(&l.item.path, &Device::Cpu)?;
            if t.dims() != [3, size, size] {
                let msg = format!("image {} has shape {:?}, expected [3, {size}, {size}]", l.item.path.display(), t.dims());
                return Err(Error::data(&l.item.source, l.item.line, msg));
            }
            pixels.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(ImageSet {
            pixels,
            styles: items.iter().map(|l| l.style).collect(),
            categories: items.iter().map(|l| l.category).collect(),
            size,
        })
    }

    pub fn len(&self) -> usize {
        self.styles.len()
    }

    fn image(&self, i: usize) -> &[f32] {
        let plane = 3 * self.size * self.size;
        &self.pixels[i * plane..(i + 1) * plane]
    }

    /// Images `indices` as a [B, 3, S, S] tensor, each shifted by a random
    /// offset of up to `max_shift` pixels per axis, the uncovered border
    /// filled with white (1.0, the emoji background). `rng` decides the
    /// offsets, so the batch is a function of its seed.
    pub fn batch(&self, indices: &[usize], max_shift: usize, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let s = self.size;
        let m = max_shift as i64;
        let mut out = Vec::with_capacity(indices.len() * 3 * s * s);
        for &i in indices {
            let src = self.image(i);
            let (dy, dx) = if m > 0 { (rng.random_range(-m..=m), rng.random_range(-m..=m)) } else { (0, 0) };
            for c in 0..3 {
                for y in 0..s as i64 {
                    for x in 0..s as i64 {
                        let (sy, sx) = (y - dy, x - dx);
                        let inside = (0..s as i64).contains(&sy) && (0..s as i64).contains(&sx);
                        out.push(if inside { src[(c * s + sy as usize) * s + sx as usize] } else { 1.0 });
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (indices.len(), 3, s, s), &Device::Cpu)?)
    }
}

/// A stream seeded from the run seed and a counter (epoch, step): the
/// shuffles and shifts of step k are the same whether or not the run was
/// interrupted before it, with no generator state to save.
pub(crate) fn stream(seed: u64, domain: u64, counter: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(domain);
    rng.set_word_pos((counter as u128) << 20);
    rng
}
