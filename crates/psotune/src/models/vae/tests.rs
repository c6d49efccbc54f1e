//! Unit tests on tiny random VAEs: strict loading, config variants, the
//! latent scaling helpers and f64 gradient checks. Parity with diffusers is in
//! `tests/vae_parity.rs`.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::*;
use crate::nn::Weights;
use crate::ops::gradcheck::{check, det_tensor, project};

fn tiny_config() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        norm_num_groups: 4,
        latent_channels: 4,
        layers_per_block: 1,
        sample_size: SampleSize::Square(8),
        ..VaeConfig::default()
    }
}

/// Every tensor a module asks for, filled with deterministic values: weights
/// scaled by 1/sqrt(fan_in) so activations stay O(1), norm scales near 1.
fn random_tensors<F>(build: F, dtype: DType) -> HashMap<String, Tensor>
where
    F: FnOnce(VarBuilder) -> candle_core::Result<()>,
{
    let vm = VarMap::new();
    build(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu)).unwrap();
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let dims = data[name].dims().to_vec();
            let r = det_tensor(&dims, 1000 + i as u64);
            let t = if dims.len() > 1 {
                (r / (dims[1..].iter().product::<usize>() as f64).sqrt()).unwrap()
            } else if name.ends_with(".weight") {
                // Rank-1 weights are group-norm scales.
                r.affine(0.2, 1.0).unwrap()
            } else {
                (r * 0.1).unwrap()
            };
            (name.clone(), t.to_dtype(dtype).unwrap())
        })
        .collect()
}

fn vae_tensors(cfg: &VaeConfig, dtype: DType) -> HashMap<String, Tensor> {
    random_tensors(|vb| AutoencoderKL::load(vb, cfg).map(|_| ()), dtype)
}

fn load(tensors: HashMap<String, Tensor>, cfg: &VaeConfig, dtype: DType) -> (AutoencoderKL, Weights) {
    let w = Weights::from_tensors(tensors, "test.safetensors", dtype, &Device::Cpu);
    let m = AutoencoderKL::load(w.var_builder(), cfg).unwrap();
    (m, w)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[test]
fn shapes_follow_the_downsampling_factor() {
    let cfg = tiny_config();
    let (vae, w) = load(vae_tensors(&cfg, DType::F32), &cfg, DType::F32);
    w.finish().unwrap();
    let img = det_tensor(&[2, 3, 8, 8], 1).to_dtype(DType::F32).unwrap();
    let post = vae.encode(&img).unwrap();
    assert_eq!(cfg.downsampling_factor(), 2);
    assert_eq!(post.mean.dims(), &[2, 4, 4, 4]);
    assert_eq!(post.logvar.dims(), &[2, 4, 4, 4]);
    assert_eq!(vae.decode(&post.mode()).unwrap().dims(), &[2, 3, 8, 8]);
}

#[test]
fn strict_loader_names_a_missing_key() {
    let cfg = tiny_config();
    let mut t = vae_tensors(&cfg, DType::F32);
    let key = "decoder.up_blocks.1.resnets.1.conv2.weight";
    assert!(t.remove(key).is_some(), "the decoder has layers_per_block + 1 resnets per up block");
    let (_, w) = load(t, &cfg, DType::F32);
    let err = w.finish().unwrap_err();
    assert_eq!(
        match &err {
            crate::Error::Weights { report, .. } => report.missing.clone(),
            other => panic!("{other}"),
        },
        vec![key.to_string()]
    );
    assert!(err.to_string().contains(key), "{err}");
}

#[test]
fn without_mid_attention_the_attention_keys_are_neither_needed_nor_accepted() {
    let with = tiny_config();
    let without = VaeConfig { mid_block_add_attention: false, ..tiny_config() };
    let t = vae_tensors(&without, DType::F32);
    assert!(!t.keys().any(|k| k.contains("attentions")));
    let (vae, w) = load(t, &without, DType::F32);
    w.finish().unwrap();
    assert!(vae.encoder.mid_block.attentions.iter().all(Option::is_none));
    let img = det_tensor(&[1, 3, 8, 8], 2).to_dtype(DType::F32).unwrap();
    assert_eq!(vae.decode(&vae.encode(&img).unwrap().mean).unwrap().dims(), &[1, 3, 8, 8]);

    // A checkpoint that has the attention weights does not fit this config.
    let (_, w) = load(vae_tensors(&with, DType::F32), &without, DType::F32);
    let report = w.report();
    assert!(report.missing.is_empty() && report.unused.iter().any(|k| k == "encoder.mid_block.attentions.0.to_q.weight"));
}

#[test]
fn quant_convs_can_be_absent() {
    let cfg = VaeConfig { use_quant_conv: false, use_post_quant_conv: false, ..tiny_config() };
    let t = vae_tensors(&cfg, DType::F32);
    assert!(!t.keys().any(|k| k.contains("quant_conv")));
    let (vae, w) = load(t, &cfg, DType::F32);
    w.finish().unwrap();
    assert!(vae.quant_conv.is_none() && vae.post_quant_conv.is_none());
}

#[test]
fn shift_and_scaling_factor_are_applied_both_ways() {
    let cfg = VaeConfig { shift_factor: Some(0.25), scaling_factor: 1.5, ..tiny_config() };
    let (vae, _) = load(vae_tensors(&cfg, DType::F64), &cfg, DType::F64);
    let img = det_tensor(&[1, 3, 8, 8], 3);
    let post = vae.encode(&img).unwrap();

    let latents = vae.latents_from_image(&img, None).unwrap();
    let want = ((&post.mean - 0.25).unwrap() * 1.5).unwrap();
    assert!(max_abs_diff(&latents, &want) < 1e-12);

    let noise = det_tensor(&[1, 4, 4, 4], 4);
    let sampled = vae.latents_from_image(&img, Some(&noise)).unwrap();
    let z = (&post.mean + ((&post.logvar * 0.5).unwrap().exp().unwrap() * &noise).unwrap()).unwrap();
    assert!(max_abs_diff(&sampled, &((z - 0.25).unwrap() * 1.5).unwrap()) < 1e-12);

    let image = vae.image_from_latents(&latents).unwrap();
    let want = vae.decode(&((&latents / 1.5).unwrap() + 0.25).unwrap()).unwrap();
    assert!(max_abs_diff(&image, &want) < 1e-12);
    assert!(max_abs_diff(&vae.decode(&post.mean).unwrap(), &image) < 1e-12);
}

#[test]
fn posterior_logvar_is_clamped_like_diffusers() {
    let moments = Tensor::new(&[[[[0.5f64]], [[-1.0]], [[-100.0]], [[100.0]]]], &Device::Cpu).unwrap();
    let post = DiagonalGaussian::from_moments(&moments).unwrap();
    assert_eq!(post.mean.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![0.5, -1.0]);
    assert_eq!(post.logvar.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![-30.0, 20.0]);
    assert!(post.sample(&Tensor::zeros((1, 3, 1, 1), DType::F64, &Device::Cpu).unwrap()).is_err());
}

#[test]
fn pre_0_14_attention_key_names_load_to_the_same_model() {
    let cfg = tiny_config();
    let t = vae_tensors(&cfg, DType::F64);
    let legacy: HashMap<String, Tensor> = t
        .iter()
        .map(|(k, v)| {
            let k = k
                .replace("attentions.0.to_q.", "attentions.0.query.")
                .replace("attentions.0.to_k.", "attentions.0.key.")
                .replace("attentions.0.to_v.", "attentions.0.value.")
                .replace("attentions.0.to_out.0.", "attentions.0.proj_attn.");
            (k, v.clone())
        })
        .collect();
    assert!(legacy.contains_key("decoder.mid_block.attentions.0.proj_attn.weight"));
    let (new, _) = load(t, &cfg, DType::F64);
    let (old, w) = load(legacy, &cfg, DType::F64);
    w.finish().unwrap();
    let z = det_tensor(&[1, 4, 4, 4], 5);
    assert_eq!(max_abs_diff(&new.decode(&z).unwrap(), &old.decode(&z).unwrap()), 0.0);
}

#[test]
fn load_refuses_an_unbuildable_config() {
    let cfg = VaeConfig { norm_num_groups: 3, ..tiny_config() };
    let vm = VarMap::new();
    let err = AutoencoderKL::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap_err();
    assert!(err.to_string().contains("block_out_channels"), "{err}");
}

#[test]
fn gradcheck_mid_block_resnet_and_attention() {
    let (c, groups) = (8, 4);
    let build = |vb: VarBuilder| UNetMidBlock2D::load(vb, c, groups, true);
    let t = random_tensors(|vb| build(vb).map(|_| ()), DType::F64);
    let w = Weights::from_tensors(t, "mid", DType::F64, &Device::Cpu);
    let block = build(w.var_builder()).unwrap();
    w.finish().unwrap();
    let Some(attn) = block.attentions[0].clone() else { panic!("attention expected") };

    // Input, plus the attention's query projection and group-norm scale (what
    // LoRA and full fine-tuning differentiate through).
    let inputs = [det_tensor(&[1, c, 3, 3], 6), attn.to_q.weight.clone(), attn.group_norm.weight.clone()];
    let err = check(&inputs, |xs| {
        let mut b = block.clone();
        let mut a = attn.clone();
        a.to_q.weight = xs[1].clone();
        a.group_norm.weight = xs[2].clone();
        b.attentions[0] = Some(a);
        project(&b.forward(&xs[0])?, 7)
    })
    .unwrap();
    eprintln!("mid block gradient relative error {err:.1e}");
    assert!(err < 1e-5, "mid block gradient relative error {err}");
}

#[test]
fn gradcheck_decode_wrt_latent() {
    let cfg = tiny_config();
    let (vae, _) = load(vae_tensors(&cfg, DType::F64), &cfg, DType::F64);
    let z = det_tensor(&[1, 4, 3, 3], 8);
    let err = check(&[z], |xs| project(&vae.image_from_latents(&xs[0])?, 9)).unwrap();
    eprintln!("decode gradient relative error {err:.1e}");
    assert!(err < 1e-5, "decode gradient relative error {err}");
}

#[test]
fn gradcheck_encode_wrt_image() {
    // Not on the training path today, but the asymmetric downsampling pad and
    // the posterior split must not cut gradients if it ever is.
    let cfg = tiny_config();
    let (vae, _) = load(vae_tensors(&cfg, DType::F64), &cfg, DType::F64);
    let img = det_tensor(&[1, 3, 4, 4], 10);
    let noise = det_tensor(&[1, 4, 2, 2], 11);
    let err = check(&[img], |xs| project(&vae.latents_from_image(&xs[0], Some(&noise))?, 12)).unwrap();
    eprintln!("encode gradient relative error {err:.1e}");
    assert!(err < 1e-5, "encode gradient relative error {err}");
}
