//! LoRA on tiny f64 UNets: adapters off is the base model bit for bit,
//! merging equals the adapter forward, targets select what they say.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::models::unet::testing::{random_weights, tiny_config, weights};
use crate::models::unet::{AddedCond, UNet2DConditionModel};
use crate::nn::modules::layer_paths;
use crate::ops::gradcheck::det_tensor;

pub(crate) fn tiny_unet(sdxl: bool, linear_proj: bool) -> UNet2DConditionModel {
    let cfg = tiny_config(sdxl, linear_proj);
    let w = weights(random_weights(|vb| UNet2DConditionModel::load(vb, &cfg)));
    let unet = UNet2DConditionModel::load(w.var_builder(), &cfg).unwrap();
    w.finish().unwrap();
    unet
}

pub(crate) fn run(unet: &UNet2DConditionModel) -> Tensor {
    let dev = Device::Cpu;
    let added = unet.add_embedding.as_ref().map(|_| AddedCond {
        text_embeds: det_tensor(&[2, 3], 3),
        time_ids: Tensor::new(&[[8f64, 8., 0., 0., 8., 8.], [8., 8., 0., 0., 8., 8.]], &dev).unwrap(),
    });
    let t = Tensor::new(&[10f64, 700.], &dev).unwrap();
    unet.forward(&det_tensor(&[2, 4, 4, 4], 1), &t, &det_tensor(&[2, 3, 5], 2), added.as_ref()).unwrap()
}

/// Fresh adapters have B = 0; give B seeded values so they do something.
pub(crate) fn randomize_b(set: &LoraSet, seed: u64) {
    for (i, (_, l)) in set.adapters.iter().enumerate() {
        let b = l.lora_b.as_tensor();
        let v = (crate::diffusion::randn(b.dims(), seed + i as u64, DType::F64, b.device()).unwrap() * 0.1).unwrap();
        l.lora_b.set(&v.to_dtype(b.dtype()).unwrap()).unwrap();
    }
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn adapters_off_is_the_base_model_exactly() {
    for (sdxl, linear) in [(false, false), (true, true)] {
        let base = tiny_unet(sdxl, linear);
        let want = run(&base);
        let mut unet = base.clone();
        let lora = apply_lora(&mut unet, &LoraConfig::new(2, 3.0, LoraTargets::preset(TargetPreset::All))).unwrap();
        // Fresh adapters (B = 0) leave the output unchanged.
        assert!(max_diff(&run(&unet), &want) < 1e-12);
        randomize_b(&lora, 7);
        let on = run(&unet);
        assert!(max_diff(&on, &want) > 1e-3, "adapters had no effect");
        let off = lora.switch.run_disabled(|| run(&unet));
        let (a, b): (Vec<f64>, Vec<f64>) = (off.flatten_all().unwrap().to_vec1().unwrap(), want.flatten_all().unwrap().to_vec1().unwrap());
        assert_eq!(a, b, "adapters off must be bit-identical to the base model");
        assert!(lora.switch.enabled(), "run_disabled restores the switch");
        // The runtime multiplier scales the adapter contribution: 0 = base.
        lora.switch.set_multiplier(0.0);
        assert!(max_diff(&run(&unet), &want) < 1e-12);
    }
}

#[test]
fn merged_weights_and_outputs_equal_the_adapters() {
    for (sdxl, linear) in [(false, false), (true, true)] {
        let mut unet = tiny_unet(sdxl, linear);
        let base = unet.clone();
        let mut cfg = LoraConfig::new(3, 1.5, LoraTargets::preset(TargetPreset::All));
        cfg.init = LoraInit::Gaussian;
        let lora = apply_lora(&mut unet, &cfg).unwrap();
        randomize_b(&lora, 11);
        lora.switch.set_multiplier(0.7);
        let with_adapters = run(&unet);
        let mut merged = unet.clone();
        assert_eq!(merge_lora(&mut merged).unwrap(), lora.len());
        assert!(layer_paths(&mut merged).unwrap().len() > lora.len() / 2);
        // weight = base + 0.7 * alpha/r * B @ A, checked on one Linear and one Conv2d.
        let q = &merged.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q;
        let l = base.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.clone();
        let (_, ad) = lora.adapters.iter().find(|(p, _)| p == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").unwrap();
        let want = (l + (ad.lora_b.as_tensor().matmul(ad.lora_a.as_tensor()).unwrap() * (0.7 * 1.5 / 3.0)).unwrap()).unwrap();
        assert!(max_diff(&q.weight, &want) < 1e-14);
        assert!(q.lora.is_none());
        let c = &merged.down_blocks[0].resnets[0].conv1;
        let (_, ad) = lora.adapters.iter().find(|(p, _)| p == "down_blocks.0.resnets.0.conv1").unwrap();
        let (o, i, kh, kw) = c.weight.dims4().unwrap();
        let ba = ad.lora_b.as_tensor().flatten_from(1).unwrap().matmul(&ad.lora_a.as_tensor().flatten_from(1).unwrap()).unwrap();
        let want = (&base.down_blocks[0].resnets[0].conv1.weight + (ba.reshape((o, i, kh, kw)).unwrap() * (0.7 * 1.5 / 3.0)).unwrap()).unwrap();
        assert!(max_diff(&c.weight, &want) < 1e-14);
        let d = max_diff(&run(&merged), &with_adapters);
        assert!(d < 1e-10, "merged output differs by {d}");
    }
}

#[test]
fn presets_select_the_documented_layers() {
    let mut unet = tiny_unet(true, false);
    let count = |unet: &mut UNet2DConditionModel, t: LoraTargets| -> Vec<String> {
        let mut u = unet.clone();
        apply_lora(&mut u, &LoraConfig::new(1, 1.0, t)).unwrap().adapters.into_iter().map(|(p, _)| p).collect()
    };
    let attn = count(&mut unet, LoraTargets::preset(TargetPreset::Attn));
    // four transformer blocks (down 0: 1, mid: 1, up 1: 2) x 2 attentions x 4 projections
    assert_eq!(attn.len(), 32, "{attn:?}");
    assert!(attn.iter().all(|p| p.contains(".attn1.") || p.contains(".attn2.")));
    assert!(attn.contains(&"mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0".to_string()));
    let ff = count(&mut unet, LoraTargets::preset(TargetPreset::AttnFf));
    assert_eq!(ff.len(), 40);
    assert!(ff.contains(&"up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj".to_string()));
    let lin = count(&mut unet, LoraTargets::preset(TargetPreset::AllLinear));
    assert!(lin.contains(&"add_embedding.linear_2".to_string()) && lin.contains(&"down_blocks.0.resnets.0.time_emb_proj".to_string()));
    assert!(!lin.iter().any(|p| p.ends_with("proj_in")), "conv proj_in is not a Linear");
    let all = count(&mut unet, LoraTargets::preset(TargetPreset::All));
    for p in ["conv_in", "conv_out", "down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv", "up_blocks.0.resnets.0.conv_shortcut", "mid_block.attentions.0.proj_out"] {
        assert!(all.contains(&p.to_string()), "{p} missing from 'all'");
    }
    let custom = count(&mut unet, LoraTargets::parse(r"up_blocks\..*\.to_k, conv_in").unwrap());
    assert_eq!(custom, vec!["conv_in", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k", "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k", "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k"]);
    assert!(apply_lora(&mut unet, &LoraConfig::new(1, 1.0, LoraTargets::parse("nothing_here").unwrap())).is_err());
    assert!(LoraTargets::parse("(").is_err());
}

#[test]
fn gradients_reach_only_the_adapters() {
    let mut unet = tiny_unet(false, true);
    let lora = apply_lora(&mut unet, &LoraConfig::new(2, 2.0, LoraTargets::preset(TargetPreset::AttnFf))).unwrap();
    randomize_b(&lora, 3);
    let loss = run(&unet).sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, v) in lora.vars() {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0, "{name}");
    }
    // A's init is PEFT's kaiming bound 1/sqrt(fan_in).
    let (_, l) = &lora.adapters[0];
    let fan_in = l.lora_a.dim(1).unwrap() as f64;
    let m = l.lora_a.as_tensor().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(m <= 1.0 / fan_in.sqrt() && m > 0.0);
}

#[test]
fn full_finetuning_makes_chosen_weights_vars() {
    let mut unet = tiny_unet(false, true);
    let vars = make_trainable(&mut unet, &LoraTargets::parse(r".*attn2\.to_[kv]").unwrap(), true).unwrap();
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"));
    assert_eq!(names.len(), 8, "to_k / to_v have no bias: {names:?}");
    let loss = run(&unet).sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!(vars.iter().all(|(_, v)| grads.get(v.as_tensor()).is_some()));
    assert!(grads.get(&unet.conv_in.weight).is_none(), "frozen weights get no gradient");
    let _ = Var::from_tensor(&unet.conv_in.weight).unwrap();
}

/// Regression (review defect 3): a run started from a LoRA file compares
/// with the model it starts from. Anchored adapters switched off keep the
/// values they had when anchored, whatever training does to them after.
#[test]
fn anchored_adapters_switched_off_are_the_starting_model() {
    let base = tiny_unet(false, false);
    let mut unet = base.clone();
    let lora = apply_lora(&mut unet, &LoraConfig::new(2, 3.0, LoraTargets::preset(TargetPreset::All))).unwrap();
    randomize_b(&lora, 11);
    let start = run(&unet);
    assert_eq!(anchor_lora(&mut unet).unwrap(), lora.len());
    // Switched on and off, the anchored model is the starting model bit for bit.
    assert_eq!(run(&unet).flatten_all().unwrap().to_vec1::<f64>().unwrap(), start.flatten_all().unwrap().to_vec1::<f64>().unwrap());
    let off = lora.switch.run_disabled(|| run(&unet));
    assert_eq!(off.flatten_all().unwrap().to_vec1::<f64>().unwrap(), start.flatten_all().unwrap().to_vec1::<f64>().unwrap());
    // Training moves the adapters; the frozen model stays where it started.
    randomize_b(&lora, 12);
    assert!(max_diff(&run(&unet), &start) > 1e-3);
    let off = lora.switch.run_disabled(|| run(&unet));
    assert_eq!(off.flatten_all().unwrap().to_vec1::<f64>().unwrap(), start.flatten_all().unwrap().to_vec1::<f64>().unwrap());
    assert!(max_diff(&off, &run(&base)) > 1e-3, "the anchor must not be the bare base model");
}
