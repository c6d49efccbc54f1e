//! The timed workloads; each mirrors a function of tools/bench_pytorch.py.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use psotune::diffusion::{EulerAncestral, NoiseRng, NoiseSchedule, Sampler, SchedulerConfig, Timesteps};
use psotune::models::unet::{UNet2DConditionModel, UNetConfig};
use psotune::nn::{apply_lora, LoraConfig, LoraInit, LoraTargets, TargetPreset, Weights};
use psotune::train::{AdamW, AdamWConfig, Grads};
use rand::{Rng, SeedableRng};

const TEXT_LEN: usize = 77;

/// torch.optim.AdamW's defaults except lr, as in tools/bench_pytorch.py.
fn adamw_config() -> AdamWConfig {
    AdamWConfig { lr: 1e-4, ..AdamWConfig::default() }
}

pub struct Timing {
    pub ms: Vec<f64>,
    /// VmHWM right after the model was loaded (before any step), MiB.
    pub load_peak_mb: f64,
}

impl Timing {
    pub fn median(&self) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }
}

pub fn timed(steps: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ms = Vec::with_capacity(steps);
    for i in 0..steps {
        let t0 = Instant::now();
        f()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        println!("  step {i}: {:.1} ms", ms[i]);
    }
    Ok(Timing { ms, load_peak_mb: crate::peak_rss_mb() })
}

/// A diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors)
/// through psotune's strict loader.
fn load_unet(dir: &Path, trainable: bool, dev: &Device) -> Result<(UNet2DConditionModel, Weights)> {
    let cfg = UNetConfig::from_file(dir.join("config.json"))?;
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let mut weights = Weights::from_files(&[file], DType::F32, dev)?;
    if trainable {
        weights = weights.trainable();
    }
    let unet = UNet2DConditionModel::load(weights.var_builder(), &cfg)?;
    weights.finish().with_context(|| format!("loading {}", dir.display()))?;
    Ok((unet, weights))
}

pub struct TrainArgs<'a> {
    pub model: &'a Path,
    pub batch: usize,
    pub latent: usize,
    pub lora_rank: usize,
    pub checkpointing: bool,
    pub steps: usize,
    pub warmup: usize,
}

/// noise, forward, MSE against the noise, backward, AdamW.
pub fn train(a: &TrainArgs) -> Result<(Timing, usize)> {
    let dev = Device::Cpu;
    let full = a.lora_rank == 0;
    let (mut unet, weights) = load_unet(a.model, full, &dev)?;
    unet.set_gradient_checkpointing(a.checkpointing);
    let load_peak_mb = crate::peak_rss_mb();
    // LoRA as tools/bench_pytorch.py's peft config: rank r, lora_alpha = r
    // (scale 1), gaussian init, on to_q/to_k/to_v/to_out.0 of every attention.
    let params: Vec<(String, Var)> = if full {
        weights.vars()
    } else {
        let mut cfg = LoraConfig::new(a.lora_rank, a.lora_rank as f64, LoraTargets::preset(TargetPreset::Attn));
        cfg.init = LoraInit::Gaussian;
        apply_lora(&mut unet, &cfg)?.vars()
    };
    drop(weights); // the Vars hold the tensors; the loader's copy is not needed
    let n_train: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    println!("  trainable parameters: {:.3} M", n_train as f64 / 1e6);
    let mut opt = AdamW::new(params.clone(), adamw_config())?;

    let schedule = NoiseSchedule::from_config(&SchedulerConfig::sd_turbo())?;
    let n_t = schedule.num_train_timesteps();
    let cfg = unet.config().clone();
    let (b, c, s) = (a.batch, cfg.in_channels, a.latent);
    let mut rng = NoiseRng::new(0);
    let x0 = rng.randn((b, c, s, s), DType::F32, &dev)?;
    let ctx = rng.randn((b, TEXT_LEN, cfg.cross_attention_dim[0]), DType::F32, &dev)?;
    let mut trng = rand::rngs::StdRng::seed_from_u64(0);

    let timing = timed(a.steps, a.warmup, || {
        let noise = rng.randn((b, c, s, s), DType::F32, &dev)?;
        let t: Vec<f64> = (0..b).map(|_| trng.random_range(0..n_t) as f64).collect();
        let noisy = schedule.add_noise(&x0, &noise, &t)?;
        let tt = Tensor::from_vec(t.iter().map(|v| *v as f32).collect::<Vec<_>>(), b, &dev)?;
        let pred = unet.forward(&noisy, &tt, &ctx, None)?;
        let loss = (pred - &noise)?.sqr()?.mean_all()?;
        let store = loss.backward()?;
        opt.step(&Grads::from_store(&store, &params))?;
        Ok(())
    })?;
    Ok((Timing { load_peak_mb, ..timing }, n_train))
}

pub struct SampleArgs<'a> {
    pub model: &'a Path,
    pub batch: usize,
    pub latent: usize,
    pub sample_steps: usize,
    pub steps: usize,
    pub warmup: usize,
}

/// A full Euler-ancestral (SD-Turbo scheduler, trailing spacing) sample of
/// `sample_steps` UNet evaluations, no gradients.
pub fn sample(a: &SampleArgs) -> Result<Timing> {
    let dev = Device::Cpu;
    let (unet, _weights) = load_unet(a.model, false, &dev)?;
    let load_peak_mb = crate::peak_rss_mb();
    let cfg = unet.config().clone();
    let sampler = EulerAncestral::new(&SchedulerConfig::sd_turbo(), &Timesteps::Steps(a.sample_steps))?;
    let (b, c, s) = (a.batch, cfg.in_channels, a.latent);
    let mut rng = NoiseRng::new(0);
    let ctx = rng.randn((b, TEXT_LEN, cfg.cross_attention_dim[0]), DType::F32, &dev)?;
    let timing = timed(a.steps, a.warmup, || {
        let mut x = rng.randn((b, c, s, s), DType::F32, &dev)?.affine(sampler.init_noise_sigma(), 0.0)?;
        for (i, t) in sampler.timesteps().to_vec().into_iter().enumerate() {
            let inp = sampler.scale_model_input(&x, i)?;
            let out = unet.forward(&inp, &Tensor::new(t as f32, &dev)?, &ctx, None)?;
            let noise = if sampler.needs_noise(i) { Some(rng.randn((b, c, s, s), DType::F32, &dev)?) } else { None };
            x = sampler.step(i, &x, &out, noise.as_ref())?.prev;
        }
        Ok(())
    })?;
    Ok(Timing { load_peak_mb, ..timing })
}

/// Median time of an n x n x n f32 matrix product.
pub fn gemm(n: usize, reps: usize) -> Result<Timing> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    timed(reps, 1, || {
        a.matmul(&b)?;
        Ok(())
    })
}

/// Median times of one `ops::attention_heads` forward, and of forward +
/// backward (the gradient of a fixed random projection of the output).
pub fn attention(batch: usize, tokens: usize, keys: usize, heads: usize, dim: usize, steps: usize) -> Result<(Timing, Timing)> {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(0);
    let q = Var::from_tensor(&rng.randn((batch, tokens, heads * dim), DType::F32, &dev)?)?;
    let k = Var::from_tensor(&rng.randn((batch, keys, heads * dim), DType::F32, &dev)?)?;
    let v = Var::from_tensor(&rng.randn((batch, keys, heads * dim), DType::F32, &dev)?)?;
    let proj = rng.randn((batch, tokens, heads * dim), DType::F32, &dev)?;
    let scale = 1.0 / (dim as f64).sqrt();
    let attend = || psotune::ops::attention_heads(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, scale);
    let fwd = timed(steps, 1, || {
        attend()?;
        Ok(())
    })?;
    let both = timed(steps, 1, || {
        let loss = (attend()? * &proj)?.sum_all()?;
        loss.backward()?;
        Ok(())
    })?;
    Ok((fwd, both))
}
