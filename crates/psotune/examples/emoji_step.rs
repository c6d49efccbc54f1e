//! One training step of the built-in emoji UNet (issue 5's model), timed in
//! its parts: forward, backward, AdamW. The step the long training runs
//! repeat for hours, so the one whose speed matters most (issue 3).
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p psotune --example emoji_step [-- STEPS]
//!
//! Random weights (candle's default inits), batch 64, 4x8x8 latents, 32
//! text tokens of width 128, every weight trained. Prints each timed step
//! and the fastest of them (on a shared CPU the minimum is the stablest
//! estimate of the code's own cost).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use psotune::diffusion::{NoiseRng, NoiseSchedule, SchedulerConfig};
use psotune::models::unet::{UNet2DConditionModel, UNetConfig};
use psotune::train::{AdamW, AdamWConfig, Grads};

/// The emoji UNet: 3 levels 64/128/192, cross-attention at the first two
/// down levels (mirrored up), linear projections, 8x8 latents.
const CONFIG: &str = r#"{
    "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "block_out_channels": [64, 128, 192], "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": [2, 4, 6], "cross_attention_dim": 128,
    "norm_num_groups": 32, "use_linear_projection": true
}"#;

const BATCH: usize = 64;
const TEXT_LEN: usize = 32;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    psotune::threads::init();
    let steps: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dev = Device::Cpu;
    let cfg = UNetConfig::from_json(CONFIG, "emoji.json")?;
    let vm = VarMap::new();
    let unet = UNet2DConditionModel::load(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg)?;
    let params: Vec<_> = {
        let data = vm.data().lock().map_err(|_| "varmap poisoned")?;
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let n: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    println!("parameters: {:.2} M in {} tensors, threads {}", n as f64 / 1e6, params.len(), rayon::current_num_threads());
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: 1e-4, ..AdamWConfig::default() })?;
    let schedule = NoiseSchedule::from_config(&SchedulerConfig::sd_turbo())?;
    let mut rng = NoiseRng::new(0);
    let x0 = rng.randn((BATCH, 4, 8, 8), DType::F32, &dev)?;
    let ctx = rng.randn((BATCH, TEXT_LEN, 128), DType::F32, &dev)?;
    let t: Vec<f64> = (0..BATCH).map(|i| ((i * 37) % 1000) as f64).collect();
    let tt = Tensor::from_vec(t.iter().map(|v| *v as f32).collect::<Vec<_>>(), BATCH, &dev)?;

    let mut best = [f64::INFINITY; 4];
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let noise = rng.randn((BATCH, 4, 8, 8), DType::F32, &dev)?;
        let noisy = schedule.add_noise(&x0, &noise, &t)?;
        let pred = unet.forward(&noisy, &tt, &ctx, None)?;
        let loss = (pred - &noise)?.sqr()?.mean_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let fw = ms(t0);
        let t1 = Instant::now();
        let store = loss.backward()?;
        let bw = ms(t1);
        let t2 = Instant::now();
        opt.step(&Grads::from_store(&store, &params))?;
        let op = ms(t2);
        let total = ms(t0);
        println!("step {i}: total {total:.1} ms  forward {fw:.1}  backward {bw:.1}  adamw {op:.1}");
        if i > 0 {
            for (b, v) in best.iter_mut().zip([total, fw, bw, op]) {
                *b = b.min(v);
            }
        }
    }
    println!("min: total {:.1} ms  forward {:.1}  backward {:.1}  adamw {:.1}", best[0], best[1], best[2], best[3]);
    Ok(())
}
