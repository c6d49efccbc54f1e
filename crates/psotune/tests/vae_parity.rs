//! AutoencoderKL parity with diffusers on the tiny fixture VAEs of SD 2.1 and
//! SDXL (block_out_channels [16, 32], latent_channels 4, norm_num_groups 8; a
//! 16x16 image <-> an 8x8 latent; they differ in weights and scaling_factor).
//! The goldens come from tools/make_fixtures.py, which runs diffusers 0.42.1
//! in f32:
//!
//!     post = vae.encode(image).latent_dist   # vae.posterior_mean / _logvar
//!     decoded = vae.decode(decode_in).sample  # vae.decoded


use candle_core::{DType, Device, Tensor};
use psotune::models::vae::AutoencoderKL;
use psotune::nn::weights::read_safetensors;
mod common;
use common::fixtures;

const TOL: f64 = 1e-4;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn check_vae(model: &str) {
    let root = fixtures();
    let vae = AutoencoderKL::from_folder(root.join(model).join("vae"), DType::F32, &Device::Cpu).unwrap();
    let golden = read_safetensors(&root.join(format!("golden/{model}.safetensors"))).unwrap();
    let g = |k: &str| golden.get(k).unwrap_or_else(|| panic!("golden tensor {k} missing")).to_dtype(DType::F32).unwrap();
    assert_eq!(vae.config().downsampling_factor(), 2);

    let post = vae.encode(&g("vae.image")).unwrap();
    let d_mean = max_abs_diff(&post.mean, &g("vae.posterior_mean"));
    let d_logvar = max_abs_diff(&post.logvar, &g("vae.posterior_logvar"));
    assert!(d_mean < TOL, "posterior mean differs by {d_mean}");
    assert!(d_logvar < TOL, "posterior logvar differs by {d_logvar}");

    let decoded = vae.decode(&g("vae.decode_in")).unwrap();
    let d_dec = max_abs_diff(&decoded, &g("vae.decoded"));
    eprintln!("{model}: max |diff|: mean {d_mean:.2e}, logvar {d_logvar:.2e}, decoded {d_dec:.2e}");
    assert!(d_dec < TOL, "decoded image differs by {d_dec}");

    // The pipeline helpers are decode/encode with the config's scaling.
    let s = vae.config().scaling_factor;
    let from_latents = vae.image_from_latents(&(g("vae.decode_in") * s).unwrap()).unwrap();
    assert!(max_abs_diff(&from_latents, &g("vae.decoded")) < TOL);
    let latents = vae.latents_from_image(&g("vae.image"), None).unwrap();
    assert!(max_abs_diff(&latents, &(g("vae.posterior_mean") * s).unwrap()) < TOL * s);
}

#[test]
fn sd21_tiny_vae_matches_diffusers() {
    check_vae("sd21-tiny");
}

#[test]
fn sdxl_tiny_vae_matches_diffusers() {
    check_vae("sdxl-tiny");
}
