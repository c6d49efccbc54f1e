//! Seeded Gaussian noise whose generator state can be saved and restored.
//!
//! candle's CPU `randn` cannot be seeded, and a training run must resume
//! bit-exactly from a checkpoint, so all sampling noise comes from a ChaCha8
//! stream: its whole state is the seed and the position in the stream.

use candle_core::{DType, Device, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Everything needed to continue a [`NoiseRng`] stream where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseRngState {
    pub seed: u64,
    /// Position in the ChaCha keystream, in 32-bit words.
    pub word_pos: u128,
}

#[derive(Debug, Clone)]
pub struct NoiseRng {
    seed: u64,
    rng: ChaCha8Rng,
}

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        Self { seed, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn state(&self) -> NoiseRngState {
        NoiseRngState { seed: self.seed, word_pos: self.rng.get_word_pos() }
    }

    pub fn from_state(state: NoiseRngState) -> Self {
        let mut rng = Self::new(state.seed);
        rng.rng.set_word_pos(state.word_pos);
        rng
    }

    /// Standard normal noise of the given shape. Values are drawn as f64 and
    /// rounded to `dtype`, so a stream gives the same numbers in any dtype.
    pub fn randn(&mut self, shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        let rng = &mut self.rng;
        if dtype == DType::F32 {
            let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
            return Tensor::from_vec(v, shape, device);
        }
        let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }
}

impl NoiseRng {
    /// A uniform draw in [0, 1) from the same stream (timesteps, dropout,
    /// shuffles), so that one saved state resumes all of them.
    pub fn uniform(&mut self) -> f64 {
        rand::Rng::random::<f64>(&mut self.rng)
    }

    /// A uniform index in 0..n (n > 0).
    pub fn index(&mut self, n: usize) -> usize {
        rand::Rng::random_range(&mut self.rng, 0..n.max(1))
    }
}

/// One-off seeded noise: `NoiseRng::new(seed).randn(shape, dtype, device)`.
pub fn randn(shape: impl Into<Shape>, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    NoiseRng::new(seed).randn(shape, dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_state_resumes() {
        let dev = Device::Cpu;
        let a = randn((2, 3), 7, DType::F64, &dev).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = randn((2, 3), 7, DType::F64, &dev).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let c = randn((2, 3), 8, DType::F64, &dev).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);

        let mut rng = NoiseRng::new(42);
        rng.randn(5, DType::F32, &dev).unwrap();
        let saved = rng.state();
        let json = serde_json::to_string(&saved).unwrap();
        let next = rng.randn(4, DType::F64, &dev).unwrap().to_vec1::<f64>().unwrap();
        let restored: NoiseRngState = serde_json::from_str(&json).unwrap();
        let mut resumed = NoiseRng::from_state(restored);
        assert_eq!(resumed.randn(4, DType::F64, &dev).unwrap().to_vec1::<f64>().unwrap(), next);
        assert_eq!(resumed.state(), rng.state());
    }

    #[test]
    fn dtype_only_rounds_the_same_draws() {
        let dev = Device::Cpu;
        let f64s = randn(16, 3, DType::F64, &dev).unwrap().to_vec1::<f64>().unwrap();
        let f32s = randn(16, 3, DType::F32, &dev).unwrap().to_vec1::<f32>().unwrap();
        assert!(f64s.iter().zip(&f32s).all(|(a, b)| *a as f32 == *b));
        let bf = randn(16, 3, DType::BF16, &dev).unwrap();
        assert_eq!(bf.dtype(), DType::BF16);
    }

    #[test]
    fn roughly_standard_normal() {
        let v = randn(20_000, 1, DType::F64, &Device::Cpu).unwrap().to_vec1::<f64>().unwrap();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.04, "mean {mean} var {var}");
    }
}
