//! LoRA parity with diffusers 0.42.1 + peft on the tiny fixture UNets
//! (sd21-tiny, sdxl-tiny, and the SD 1.5-like fixtures/extra/unet-sd15-lcm-tiny
//! with 1x1-conv projections; f32, max abs error 1e-4), files in fixtures/lora/:
//!
//! - `{model}.peft.safetensors`, `{model}.kohya.safetensors`: LoRAs psotune
//!   exports (seeded, re-derived here: the test fails if the export format
//!   changes without regenerating them). tools/make_lora_fixtures.py loads
//!   them with `pipe.load_lora_weights` and stores the UNet output on the
//!   golden inputs as `{model}.{format}.out` in `outputs.safetensors`.
//! - `{model}.diffusers-made.safetensors`: a LoRA peft made and diffusers'
//!   `save_lora_weights` wrote (Linear and Conv2d targets, an
//!   `alpha_pattern`), with its output `{model}.diffusers-made.out`.
//!
//! Regenerate: `PSOTUNE_WRITE_LORA_FIXTURES=1 cargo test -p psotune --test
//! lora_parity`, then `/work/venv/py/bin/python tools/make_lora_fixtures.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
mod common;
use common::{export_both, fixtures, load_unet as load, max_abs_diff, scratch};
use psotune::diffusion::randn;
use psotune::export::{self, save_merged_unet, UNetLayout};
use psotune::models::unet::{AddedCond, UNet2DConditionModel};
use psotune::nn::weights::read_safetensors;
use psotune::nn::{apply_lora, LoraConfig, LoraSet, LoraSwitch, LoraTargets, TargetPreset};

const MODELS: [(&str, bool); 2] = [("sd21-tiny", false), ("sdxl-tiny", true)];

/// Exports tested against diffusers: the two pipelines, and an SD 1.5-like
/// UNet (fixtures/extra: 1x1-conv `proj_in`/`proj_out`, three levels with a
/// plain first up block, LCM's `time_cond_proj_dim`) on its `lcm` golden case.
const EXPORTED: [&str; 3] = ["sd21-tiny", "sdxl-tiny", "sd15-tiny"];

fn unet_dir(name: &str) -> PathBuf {
    match name {
        "sd15-tiny" => fixtures().join("extra/unet-sd15-lcm-tiny"),
        _ => fixtures().join(name).join("unet"),
    }
}

/// Output on the model's golden inputs.
fn forward_any(unet: &UNet2DConditionModel, name: &str) -> Tensor {
    match name {
        "sd15-tiny" => {
            let g = read_safetensors(&fixtures().join("extra/unet-sd15-lcm-tiny.golden.safetensors")).unwrap();
            unet.forward_with_cond(&g["lcm.sample"], &g["lcm.timesteps"], &g["lcm.encoder_hidden_states"], None, Some(&g["lcm.timestep_cond"]))
                .unwrap()
        }
        _ => forward(unet, name, name == "sdxl-tiny"),
    }
}

fn forward(unet: &UNet2DConditionModel, name: &str, sdxl: bool) -> Tensor {
    let g = read_safetensors(&fixtures().join("golden").join(format!("{name}.safetensors"))).unwrap();
    let added = sdxl.then(|| AddedCond { text_embeds: g["unet.text_embeds"].clone(), time_ids: g["unet.time_ids"].clone() });
    unet.forward(&g["unet.sample"], &g["unet.timesteps"], &g["unet.encoder_hidden_states"], added.as_ref()).unwrap()
}

/// The LoRA psotune exports for the fixtures: every Linear and Conv2d,
/// rank 2, alpha 3 (scale 1.5), Kaiming A, B seeded N(0, 0.05^2). LCM's
/// `time_embedding.cond_proj` is left out: diffusers' kohya key converter
/// (`_convert_unet_lora_key`) has no rule for it, so such a file would not
/// load there.
fn seeded_lora(unet: &mut UNet2DConditionModel) -> LoraSet {
    let targets = if unet.time_embedding.cond_proj.is_some() {
        LoraTargets::patterns(&[r"(down_blocks|mid_block|up_blocks)\..*", "conv_in", "conv_out", r"time_embedding\.linear_[12]"]).unwrap()
    } else {
        LoraTargets::preset(TargetPreset::All)
    };
    let mut cfg = LoraConfig::new(2, 3.0, targets);
    cfg.seed = 42;
    let lora = apply_lora(unet, &cfg).unwrap();
    for (i, (_, l)) in lora.adapters.iter().enumerate() {
        let b = l.lora_b.as_tensor();
        l.lora_b.set(&(randn(b.dims(), 1000 + i as u64, DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap()).unwrap();
    }
    lora
}

#[test]
fn exports_are_reproducible() {
    let out = fixtures().join("lora");
    let write = std::env::var_os("PSOTUNE_WRITE_LORA_FIXTURES").is_some();
    for name in EXPORTED {
        let mut unet = load(&unet_dir(name));
        let lora = seeded_lora(&mut unet);
        let layout = UNetLayout::of(&unet);
        if write {
            std::fs::create_dir_all(&out).unwrap();
            export_both(&lora, &layout, &out, name);
        }
        let repro = scratch("lora-repro");
        let fresh = export_both(&lora, &layout, &repro, name);
        for f in fresh {
            let committed = read_safetensors(&out.join(f.file_name().unwrap())).unwrap();
            let now = read_safetensors(&f).unwrap();
            let mut keys: Vec<&String> = now.keys().collect();
            keys.sort();
            let mut ckeys: Vec<&String> = committed.keys().collect();
            ckeys.sort();
            assert_eq!(keys, ckeys, "{}: keys changed; regenerate the fixtures", f.display());
            for k in keys {
                let f = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
                assert_eq!(max_abs_diff(&f(&now[k]), &f(&committed[k])), 0.0, "{k}");
            }
        }
    }
}

#[test]
fn diffusers_loads_our_exports_with_the_same_output() {
    let outputs = read_safetensors(&fixtures().join("lora/outputs.safetensors")).unwrap();
    for name in EXPORTED {
        let base = load(&unet_dir(name));
        let base_out = forward_any(&base, name);
        for fmt in ["peft", "kohya"] {
            let mut unet = base.clone();
            let file = fixtures().join("lora").join(format!("{name}.{fmt}.safetensors"));
            let lora = export::load_lora(&file, &mut unet, &LoraSwitch::new()).unwrap();
            let got = forward_any(&unet, name);
            let want = &outputs[&format!("{name}.{fmt}.out")];
            let d = max_abs_diff(&got, want);
            let effect = max_abs_diff(&base_out, want);
            println!("{name} {fmt}: {} adapters, max |diff| {d:e} (LoRA moves the output by {effect:e})", lora.len());
            assert!(effect > 1e-2, "the LoRA should change the output");
            assert!(d < 1e-4, "{name} {fmt}: {d}");
        }
    }
}

#[test]
fn lora_made_by_peft_loads_with_the_same_output() {
    let outputs = read_safetensors(&fixtures().join("lora/outputs.safetensors")).unwrap();
    for (name, sdxl) in MODELS {
        let mut unet = load(&fixtures().join(name).join("unet"));
        let file = fixtures().join("lora").join(format!("{name}.diffusers-made.safetensors"));
        let lora = export::load_lora(&file, &mut unet, &LoraSwitch::new()).unwrap();
        assert!(lora.adapters.iter().any(|(_, l)| l.lora_a.rank() == 4), "conv targets expected");
        let d = max_abs_diff(&forward(&unet, name, sdxl), &outputs[&format!("{name}.diffusers-made.out")]);
        println!("{name} diffusers-made: {} adapters, max |diff| {d:e}", lora.len());
        assert!(d < 1e-4, "{name}: {d}");
        // With the switch off it is the base UNet again, exactly.
        let off = lora.switch.run_disabled(|| forward(&unet, name, sdxl));
        assert_eq!(max_abs_diff(&off, &forward(&load(&fixtures().join(name).join("unet")), name, sdxl)), 0.0);
    }
}

#[test]
fn merged_unet_folder_matches_the_adapters() {
    for (name, sdxl) in MODELS {
        let base_dir = fixtures().join(name).join("unet");
        let mut unet = load(&base_dir);
        let lora = seeded_lora(&mut unet);
        lora.switch.set_multiplier(0.8);
        let want = forward(&unet, name, sdxl);
        let scratch = scratch("lora-merged");
        let out = scratch.join(name);
        save_merged_unet(&base_dir, &lora.weights(), 0.8, &[], &out).unwrap();
        let merged = load(&out);
        let d = max_abs_diff(&forward(&merged, name, sdxl), &want);
        println!("{name} merged: max |diff| {d:e}");
        assert!(d < 1e-5, "{name}: {d}");
        let names: HashMap<String, Tensor> = read_safetensors(&out.join("diffusion_pytorch_model.safetensors")).unwrap();
        assert_eq!(names.len(), read_safetensors(&base_dir.join("diffusion_pytorch_model.safetensors")).unwrap().len());
    }
}
