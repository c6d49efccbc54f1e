//! Text-encoder + UNet LoRA parity with diffusers 0.42.1 + peft on the tiny
//! pipelines (sd21-tiny, sdxl-tiny; f32, max abs error 1e-4), files in
//! fixtures/lora/:
//!
//! - `{model}.te.peft.safetensors`, `{model}.te.kohya.safetensors`: LoRAs
//!   psotune exports with adapters on the UNet's attention and on every
//!   text encoder's attention and MLP (seeded, re-derived here).
//!   tools/make_lora_fixtures.py loads them with `pipe.load_lora_weights`
//!   and stores the prompt embeddings of fixtures/golden/prompts.json
//!   (`encode_prompt`: `{model}.te.{fmt}.hidden`, SDXL also `.pooled`) and
//!   the UNet output on the golden inputs (`.out`) in `te_outputs.safetensors`.
//! - `{model}.te.diffusers-made.safetensors`: a LoRA peft made on the UNet
//!   and the text encoder(s), written by `save_lora_weights`, with its
//!   outputs.
//!
//! Regenerate: `PSOTUNE_WRITE_LORA_FIXTURES=1 cargo test -p psotune --test
//! te_lora_parity`, then `/work/venv/py/bin/python tools/make_lora_fixtures.py`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
mod common;
use common::{export_both, fixtures, max_abs_diff, scratch};
use psotune::diffusion::randn;
use psotune::export::{prefixed, UNetLayout};
use psotune::models::clip::text_encoder_targets;
use psotune::models::unet::AddedCond;
use psotune::nn::weights::read_safetensors;
use psotune::nn::{apply_lora_with, LoraConfig, LoraSet, LoraTargets, TargetPreset};
use psotune::pipeline::{LoadOptions, Pipeline};

const MODELS: [&str; 2] = ["sd21-tiny", "sdxl-tiny"];

fn pipeline(name: &str) -> Pipeline {
    Pipeline::load(&fixtures().join(name), &LoadOptions::default()).unwrap()
}

fn prompts() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden/prompts.json")).unwrap()).unwrap()
}

/// (prompt hidden states, pooled, UNet output on the golden inputs).
fn outputs(pipe: &Pipeline, name: &str) -> (Tensor, Option<Tensor>, Tensor) {
    let p = prompts();
    let refs: Vec<&str> = p.iter().map(String::as_str).collect();
    let e = pipe.encode_prompts(&refs).unwrap();
    let g = read_safetensors(&fixtures().join("golden").join(format!("{name}.safetensors"))).unwrap();
    let added = (name == "sdxl-tiny").then(|| AddedCond { text_embeds: g["unet.text_embeds"].clone(), time_ids: g["unet.time_ids"].clone() });
    let out = pipe.unet.forward(&g["unet.sample"], &g["unet.timesteps"], &g["unet.encoder_hidden_states"], added.as_ref()).unwrap();
    (e.hidden, e.pooled, out)
}

/// UNet attention (rank 2, alpha 3) and every text encoder's attention +
/// MLP (rank 3, alpha 2), one switch; B seeded N(0, 0.05^2), all factors
/// rounded to f16 (the files are f16).
fn seeded_lora(pipe: &mut Pipeline) -> LoraSet {
    let mut cfg = LoraConfig::new(2, 3.0, LoraTargets::preset(TargetPreset::Attn));
    cfg.seed = 42;
    let mut set = psotune::nn::apply_lora(&mut pipe.unet, &cfg).unwrap();
    for (i, te) in pipe.text_encoders.iter_mut().enumerate() {
        let mut tc = LoraConfig::new(3, 2.0, text_encoder_targets("attn-ff").unwrap());
        tc.seed = 7 + i as u64;
        let s = apply_lora_with(&mut te.model, &tc, &set.switch).unwrap();
        set.adapters.extend(prefixed(s, i).adapters);
    }
    for (i, (_, l)) in set.adapters.iter().enumerate() {
        let b = l.lora_b.as_tensor();
        l.lora_b.set(&(randn(b.dims(), 2000 + i as u64, DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap()).unwrap();
        for v in [&l.lora_a, &l.lora_b] {
            v.set(&v.as_tensor().to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        }
    }
    set
}

#[test]
fn adapters_off_is_the_base_model_exactly_and_exports_round_trip() {
    for name in MODELS {
        let base = outputs(&pipeline(name), name);
        let mut pipe = pipeline(name);
        let set = seeded_lora(&mut pipe);
        let on = outputs(&pipe, name);
        let off = set.switch.run_disabled(|| outputs(&pipe, name));
        assert_eq!(max_abs_diff(&off.0, &base.0), 0.0, "{name}: text encoder with adapters off");
        assert_eq!(max_abs_diff(&off.2, &base.2), 0.0, "{name}: UNet with adapters off");
        assert!(max_abs_diff(&on.0, &base.0) > 1e-3, "{name}: the text-encoder LoRA should move the embeddings");
        if let (Some(a), Some(b)) = (&off.1, &base.1) {
            assert_eq!(max_abs_diff(a, b), 0.0);
        }
        // Both formats load back into a fresh pipeline with the same outputs.
        let round_trip = scratch("te-lora-round-trip");
        let files = export_both(&set, &UNetLayout::of(&pipe.unet), &round_trip, &format!("{name}.te"));
        for f in files {
            let mut fresh = pipeline(name);
            let loaded = fresh.load_lora(&f, 1.0).unwrap();
            assert_eq!(loaded.len(), set.len(), "{}", f.display());
            let mut want: Vec<&String> = set.adapters.iter().map(|(p, _)| p).collect();
            let mut got: Vec<&String> = loaded.adapters.iter().map(|(p, _)| p).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{}", f.display());
            let o = outputs(&fresh, name);
            assert_eq!(max_abs_diff(&o.0, &on.0), 0.0, "{}", f.display());
            assert_eq!(max_abs_diff(&o.2, &on.2), 0.0, "{}", f.display());
            // A UNet alone refuses the file instead of dropping half of it.
            let mut unet = pipeline(name).unet;
            let e = psotune::export::load_lora(&f, &mut unet, &psotune::nn::LoraSwitch::new()).unwrap_err().to_string();
            assert!(e.contains("text-encoder"), "{e}");
        }
    }
}

#[test]
fn te_exports_are_reproducible() {
    let out = fixtures().join("lora");
    let write = std::env::var_os("PSOTUNE_WRITE_LORA_FIXTURES").is_some();
    for name in MODELS {
        let mut pipe = pipeline(name);
        let set = seeded_lora(&mut pipe);
        let layout = UNetLayout::of(&pipe.unet);
        if write {
            export_both(&set, &layout, &out, &format!("{name}.te"));
        }
        let repro = scratch("te-lora-repro");
        for f in export_both(&set, &layout, &repro, &format!("{name}.te")) {
            let committed = read_safetensors(&out.join(f.file_name().unwrap())).unwrap();
            let now = read_safetensors(&f).unwrap();
            let mut keys: Vec<&String> = now.keys().collect();
            keys.sort();
            let mut ckeys: Vec<&String> = committed.keys().collect();
            ckeys.sort();
            assert_eq!(keys, ckeys, "{}: keys changed; regenerate the fixtures", f.display());
            for k in keys {
                let t = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
                assert_eq!(max_abs_diff(&t(&now[k]), &t(&committed[k])), 0.0, "{k}");
            }
        }
    }
}

fn check_against(name: &str, file: &str, key: &str, outputs_file: &HashMap<String, Tensor>) {
    let mut pipe = pipeline(name);
    let set = pipe.load_lora(&fixtures().join("lora").join(file), 1.0).unwrap();
    assert!(set.adapters.iter().any(|(p, _)| p.starts_with("text_encoder.")), "{file}: text-encoder adapters expected");
    let (hidden, pooled, out) = outputs(&pipe, name);
    let dh = max_abs_diff(&hidden, &outputs_file[&format!("{key}.hidden")]);
    let du = max_abs_diff(&out, &outputs_file[&format!("{key}.out")]);
    let dp = pooled.map(|p| max_abs_diff(&p, &outputs_file[&format!("{key}.pooled")])).unwrap_or(0.0);
    println!("{file}: {} adapters, max |diff| embeddings {dh:e}, pooled {dp:e}, UNet {du:e}", set.len());
    assert!(dh < 1e-4 && dp < 1e-4 && du < 1e-4, "{file}: {dh} {dp} {du}");
}

#[test]
fn diffusers_loads_our_te_exports_with_the_same_outputs() {
    let o = read_safetensors(&fixtures().join("lora/te_outputs.safetensors")).unwrap();
    for name in MODELS {
        for fmt in ["peft", "kohya"] {
            check_against(name, &format!("{name}.te.{fmt}.safetensors"), &format!("{name}.te.{fmt}"), &o);
        }
    }
}

#[test]
fn te_lora_made_by_diffusers_loads_with_the_same_outputs() {
    let o = read_safetensors(&fixtures().join("lora/te_outputs.safetensors")).unwrap();
    for name in MODELS {
        check_against(name, &format!("{name}.te.diffusers-made.safetensors"), &format!("{name}.te.diffusers-made"), &o);
    }
}

#[test]
fn merged_text_encoders_match_the_adapters() {
    use psotune::export::{save_merged_text_encoder, split_components, TEXT_ENCODERS};
    use psotune::models::clip::{ClipTextConfig, ClipTextModel};
    use psotune::nn::Weights;
    for name in MODELS {
        let mut pipe = pipeline(name);
        let set = seeded_lora(&mut pipe);
        let (_, te) = split_components(&set.weights());
        let g = read_safetensors(&fixtures().join("golden").join(format!("{name}.safetensors"))).unwrap();
        for (i, enc) in pipe.text_encoders.iter().enumerate() {
            let scratch = scratch("te-lora-merged");
            let out = scratch.join(name).join(TEXT_ENCODERS[i]);
            save_merged_text_encoder(&fixtures().join(name).join(TEXT_ENCODERS[i]), &te[i], 1.0, &out).unwrap();
            let cfg = ClipTextConfig::from_file(out.join("config.json")).unwrap();
            let w = Weights::from_files(&[out.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
            let merged = ClipTextModel::load(w.var_builder(), &cfg, cfg.has_projection()).unwrap();
            w.finish().unwrap();
            let ids = &g[if i == 0 { "prompt.input_ids" } else { "prompt.input_ids_2" }];
            let (a, b) = (enc.model.forward(ids).unwrap(), merged.forward(ids).unwrap());
            let d = max_abs_diff(&a.last_hidden_state, &b.last_hidden_state).max(max_abs_diff(&a.pooled, &b.pooled));
            println!("{name} {} merged: max |diff| {d:e}", TEXT_ENCODERS[i]);
            assert!(d < 1e-5, "{name} {}: {d}", TEXT_ENCODERS[i]);
            let base = pipeline(name);
            assert!(max_abs_diff(&base.text_encoders[i].model.forward(ids).unwrap().last_hidden_state, &b.last_hidden_state) > 1e-3);
        }
    }
}
