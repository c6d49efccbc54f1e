//! Stage 1: the AutoencoderKL, trained on all three styles so that style
//! transfer targets (Noto, OpenMoji) are representable too.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use psotune::models::vae::{AutoencoderKL, VaeConfig};
use psotune::nn::weights::write_safetensors;
use psotune::nn::Weights;
use psotune::train::{vars_to_tensors, LrSchedule};

use crate::configs;
use crate::dataset::EmojiSet;
use crate::grid::save_grid;
use crate::init::init_weights;
use crate::stage::{begin, mark_done, Trainer, TrainerSpec};
use crate::Ctx;

pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Mean absolute difference of horizontal and vertical neighbour differences.
fn edge_l1(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (h, w) = (a.dim(2)?, a.dim(3)?);
    let dx = |t: &Tensor| t.narrow(3, 1, w - 1)? - t.narrow(3, 0, w - 1)?;
    let dy = |t: &Tensor| t.narrow(2, 1, h - 1)? - t.narrow(2, 0, h - 1)?;
    let ex = (dx(a)? - dx(b)?)?.abs()?.mean_all()?;
    let ey = (dy(a)? - dy(b)?)?.abs()?.mean_all()?;
    (ex + ey)? * 0.5
}

/// KL(N(mean, exp(logvar)) || N(0, 1)) per element, averaged.
fn kl(mean: &Tensor, logvar: &Tensor) -> candle_core::Result<Tensor> {
    ((mean.sqr()? + logvar.exp()?)? - 1.0)?.sub(logvar)?.mean_all()? * 0.5
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let r = &ctx.recipe.vae;
    let Some(dir) = begin(ctx, "vae")? else { return Ok(()) };
    let set = EmojiSet::load(&ctx.data, &[])?;
    eprintln!("vae: {} images", set.len());
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&configs::vae(1.0))?)?;
    let cfg = VaeConfig::from_file(&cfg_path)?;
    let init = init_weights(|vb| AutoencoderKL::load(vb, &cfg), r.seed)?;
    let w = Weights::from_tensors(init, "init", DType::F32, &Device::Cpu).trainable();
    let vae = AutoencoderKL::load(w.var_builder(), &cfg)?;
    w.finish()?;
    let config_text = format!("{}\n# vae config\n# {}\n", toml::to_string(r)?, serde_json::to_string(&configs::vae(1.0))?);
    let spec = TrainerSpec {
        lr: r.lr,
        weight_decay: 0.0,
        schedule: LrSchedule::cosine(r.warmup, r.steps),
        total_steps: r.steps,
        checkpoint_every: r.checkpoint_every,
        seed: r.seed,
        data_len: set.len(),
        grad_clip: 1.0,
    };
    let mut tr = Trainer::open(&dir.join("run"), &config_text, w.vars(), vec![], spec)?;
    while !tr.finished() {
        let idx = tr.data.next_batch(r.batch);
        let x = set.batch(&idx)?;
        let post = vae.encode(&x)?;
        let noise = tr.rng.randn(post.mean.dims(), DType::F32, &Device::Cpu)?;
        let rec = vae.decode(&post.sample(&noise)?)?;
        let l1 = (&rec - &x)?.abs()?.mean_all()?;
        let edge = edge_l1(&rec, &x)?;
        let kl = kl(&post.mean, &post.logvar)?;
        let loss = ((&l1 + (&edge * r.edge_weight)?)? + (&kl * r.kl_weight)?)?;
        let mut rec_m = serde_json::Map::new();
        rec_m.insert("l1".into(), (l1.to_scalar::<f32>()? as f64).into());
        rec_m.insert("edge".into(), (edge.to_scalar::<f32>()? as f64).into());
        rec_m.insert("kl".into(), (kl.to_scalar::<f32>()? as f64).into());
        tr.update(&loss, rec_m)?;
    }
    tr.finish_bar();

    // Scale latents to unit second moment (SD's 0.18215 came from the same
    // measurement); SD pipelines ignore shift_factor, so none is used.
    let mut sum_sq = 0f64;
    let mut count = 0usize;
    let mut rng = psotune::diffusion::NoiseRng::new(r.seed ^ 0xface);
    let mut psnr_sum = 0f64;
    for chunk in (0..set.len()).collect::<Vec<_>>().chunks(256) {
        let x = set.batch(chunk)?;
        let post = vae.encode(&x)?;
        let z = post.sample(&rng.randn(post.mean.dims(), DType::F32, &Device::Cpu)?)?;
        sum_sq += z.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        count += z.elem_count();
        let rec = vae.decode(&post.mode())?.clamp(-1f32, 1f32)?;
        // PSNR on [0, 1] images: 10 log10(1 / mse), mse = mean((a - b)/2)^2.
        let mse = ((rec - &x)? / 2.0)?.sqr()?.mean((1, 2, 3))?;
        let per: Vec<f32> = mse.to_vec1()?;
        psnr_sum += per.iter().map(|m| 10.0 * (1.0 / (*m as f64).max(1e-10)).log10()).sum::<f64>();
    }
    let scaling = 1.0 / (sum_sq / count as f64).sqrt();
    let psnr = psnr_sum / set.len() as f64;
    let sample: Vec<usize> = (0..set.len()).step_by((set.len() / 16).max(1)).take(16).collect();
    let x = set.batch(&sample)?;
    let rec = vae.decode(&vae.encode(&x)?.mode())?;
    save_grid(&Tensor::cat(&[&x, &rec], 0)?, 16, 1, &dir.join("reconstructions.png"))?;

    let out = ctx.out.join("vae");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&configs::vae(scaling))?)?;
    let tensors = vars_to_tensors(&w.vars()).into_iter().collect();
    write_safetensors(&tensors, &out.join(WEIGHTS))?;
    let summary = serde_json::json!({ "scaling_factor": scaling, "psnr_db": psnr, "images": set.len(), "steps": r.steps });
    eprintln!("vae: {summary}");
    mark_done(&dir, &summary)
}
