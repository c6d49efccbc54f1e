//! Gradient checkpointing of the UNet (`set_gradient_checkpointing`): the
//! same outputs and the same gradients as without it, for LoRA training and
//! for full tuning, on the sd21-tiny fixture; and a finite-difference check
//! through a checkpointed UNet.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::models::unet::testing::{random_weights, weights};
use crate::nn::{apply_lora, LoraConfig, LoraTargets, TargetPreset, Weights};
use crate::ops::gradcheck::{check, det_tensor, project};

fn fixture_unet(trainable: bool) -> (UNet2DConditionModel, Weights) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sd21-tiny/unet");
    let cfg = UNetConfig::from_file(dir.join("config.json")).unwrap();
    let mut w = Weights::from_files(&[dir.join("diffusion_pytorch_model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    if trainable {
        w = w.trainable();
    }
    let unet = UNet2DConditionModel::load(w.var_builder(), &cfg).unwrap();
    w.finish().unwrap();
    (unet, w)
}

/// What one pass yields: the output, the gradients of the parameters that
/// got one (by name), the gradient of the latent.
type Pass = (Vec<f32>, Vec<(String, Vec<f32>)>, Vec<f32>);

/// One training-style pass through `unet`.
fn pass(unet: &UNet2DConditionModel, params: &[(String, Var)]) -> Pass {
    let dev = Device::Cpu;
    let latent = Var::from_tensor(&det_tensor(&[2, 4, 8, 8], 1).to_dtype(DType::F32).unwrap()).unwrap();
    let ctx = det_tensor(&[2, 7, 32], 2).to_dtype(DType::F32).unwrap();
    let t = Tensor::new(&[10f32, 700.], &dev).unwrap();
    let y = unet.forward(latent.as_tensor(), &t, &ctx, None).unwrap();
    let g = project(&y, 3).unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let grads = params.iter().filter_map(|(n, v)| g.get(v).map(|t| (n.clone(), flat(t)))).collect();
    (flat(&y), grads, flat(g.get(&latent).unwrap()))
}

/// Largest |a - b| over the largest |b|: the sums of a gradient's
/// contributions run in another order with checkpointing, so equal up to
/// rounding, not bit for bit.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn assert_same_pass(unet: &mut UNet2DConditionModel, params: &[(String, Var)]) {
    unet.set_gradient_checkpointing(false);
    let (y0, g0, l0) = pass(unet, params);
    unet.set_gradient_checkpointing(true);
    assert!(unet.gradient_checkpointing());
    let (y1, g1, l1) = pass(unet, params);
    assert_eq!(y0, y1, "the output changed");
    assert_eq!(g0.len(), params.len(), "a parameter got no gradient");
    assert_eq!(g0.iter().map(|g| &g.0).collect::<Vec<_>>(), g1.iter().map(|g| &g.0).collect::<Vec<_>>());
    for ((name, a), (_, b)) in g1.iter().zip(&g0) {
        let d = rel_diff(a, b);
        assert!(d < 1e-6, "{name}: relative difference {d}");
    }
    let d = rel_diff(&l1, &l0);
    assert!(d < 1e-6, "latent: relative difference {d}");
}

#[test]
fn checkpointing_keeps_lora_gradients() {
    let (mut unet, _w) = fixture_unet(false);
    let set = apply_lora(&mut unet, &LoraConfig::new(4, 4.0, LoraTargets::preset(TargetPreset::Attn))).unwrap();
    let params = set.vars();
    // A fresh lora_B is zero, which would leave every lora_A gradient zero.
    for (i, (name, v)) in params.iter().enumerate() {
        if name.contains("lora_B") {
            v.set(&(det_tensor(v.dims(), 100 + i as u64).to_dtype(DType::F32).unwrap() * 0.1).unwrap()).unwrap();
        }
    }
    assert!(params.len() >= 20, "{} LoRA tensors", params.len());
    assert_same_pass(&mut unet, &params);
}

#[test]
fn checkpointing_keeps_full_tuning_gradients() {
    let (mut unet, w) = fixture_unet(true);
    let params = w.vars();
    assert!(params.len() > 100, "{} weights", params.len());
    assert_same_pass(&mut unet, &params);
}

/// Finite differences through a checkpointed UNet (f64): the latent, the
/// text states and weights inside checkpointed resnets and transformers of
/// the down, mid and up path, captured by the blocks, not passed in.
#[test]
fn checkpointed_unet_gradients_match_finite_differences() {
    let cfg = crate::models::unet::testing::tiny_config(false, true);
    let base = random_weights(|vb| UNet2DConditionModel::load(vb, &cfg));
    let keys = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "mid_block.resnets.1.conv2.bias",
        "up_blocks.1.resnets.0.norm1.weight",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    ];
    let t = Tensor::new(&[421.0f64], &Device::Cpu).unwrap();
    let mut inputs = vec![det_tensor(&[1, 4, 4, 4], 4), det_tensor(&[1, 2, 5], 5)];
    inputs.extend(keys.iter().map(|k| base[*k].clone()));
    let worst = check(&inputs, |a| {
        let mut map = base.clone();
        for (k, v) in keys.iter().zip(&a[2..]) {
            map.insert(k.to_string(), v.clone());
        }
        let mut unet = UNet2DConditionModel::load(weights(map).var_builder(), &cfg)?;
        unet.set_gradient_checkpointing(true);
        project(&unet.forward(&a[0], &t, &a[1], None)?, 9)
    })
    .unwrap();
    assert!(worst < 1e-5, "worst relative error {worst}");
}
