//! UNet2DConditionModel parity with diffusers 0.42.1 on tiny random-weight
//! UNets (f32, max abs error 1e-4).
//!
//! - fixtures/{sd21-tiny,sdxl-tiny}/unet + fixtures/golden/*.safetensors,
//!   made by tools/make_fixtures.py (per-sample timesteps; SDXL text_time).
//! - fixtures/extra/*, made by tools/make_unet_extra_fixtures.py: SD 1.5-like
//!   conv projections with LCM's timestep_cond, int64 and broadcast
//!   timesteps, odd latent sizes, and the rarer config options.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
mod common;
use common::{fixtures, load_unet as load, max_abs_diff};
use candle_nn::{Init, VarBuilder};
use psotune::models::unet::{guidance_scale_embedding, AddedCond, UNet2DConditionModel, UNetConfig};
use psotune::nn::weights::read_safetensors;
use psotune::nn::Weights;

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let d = max_abs_diff(got, want);
    println!("{what}: max |diff| = {d:e}");
    assert!(d < 1e-4, "{what}: max |diff| {d} >= 1e-4");
}

fn golden(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap()
}

fn main_fixture(name: &str, sdxl: bool) {
    let root = fixtures();
    let unet = load(&root.join(name).join("unet"));
    let g = golden(&root.join("golden").join(format!("{name}.safetensors")));
    let t = &g["unet.timesteps"];
    let added = sdxl.then(|| AddedCond { text_embeds: g["unet.text_embeds"].clone(), time_ids: g["unet.time_ids"].clone() });
    let out = unet.forward(&g["unet.sample"], t, &g["unet.encoder_hidden_states"], added.as_ref()).unwrap();
    assert_close(&out, &g["unet.out"], name);
}

#[test]
fn sd21_tiny_matches_diffusers() {
    main_fixture("sd21-tiny", false);
}

#[test]
fn sdxl_tiny_matches_diffusers() {
    main_fixture("sdxl-tiny", true);
}

#[test]
fn sdxl_without_added_cond_is_an_error() {
    let root = fixtures();
    let unet = load(&root.join("sdxl-tiny/unet"));
    let g = golden(&root.join("golden/sdxl-tiny.safetensors"));
    let err = unet.forward(&g["unet.sample"], &g["unet.timesteps"], &g["unet.encoder_hidden_states"], None).unwrap_err();
    assert!(err.to_string().contains("text_time"), "{err}");
}

fn extra_case(unet: &UNet2DConditionModel, g: &HashMap<String, Tensor>, case: &str, cond: Option<&Tensor>) {
    let k = |s: &str| &g[&format!("{case}.{s}")];
    let out = unet.forward_with_cond(k("sample"), k("timesteps"), k("encoder_hidden_states"), None, cond).unwrap();
    assert_close(&out, k("out"), case);
}

#[test]
fn sd15_like_conv_projection_int_and_broadcast_timesteps_odd_size() {
    let dir = fixtures().join("extra");
    let unet = load(&dir.join("unet-sd15-lcm-tiny"));
    let g = golden(&dir.join("unet-sd15-lcm-tiny.golden.safetensors"));
    assert_eq!(g["int_t.timesteps"].dtype(), DType::I64);
    extra_case(&unet, &g, "int_t", None);
    // One timestep for a batch of two, and a 7x10 latent (not a multiple of 4).
    assert_eq!(g["odd.timesteps"].dims(), &[1]);
    extra_case(&unet, &g, "odd", None);
}

#[test]
fn lcm_guidance_embedding_and_timestep_cond_match_diffusers() {
    let dir = fixtures().join("extra");
    let unet = load(&dir.join("unet-sd15-lcm-tiny"));
    let g = golden(&dir.join("unet-sd15-lcm-tiny.golden.safetensors"));
    let w: Vec<f32> = g["lcm.w"].to_vec1().unwrap();
    let cond = guidance_scale_embedding(&w, 8, &Device::Cpu).unwrap();
    let d = max_abs_diff(&cond, &g["lcm.timestep_cond"]);
    assert!(d < 1e-5, "guidance embedding off by {d}");
    extra_case(&unet, &g, "lcm", Some(&cond));
}

#[test]
fn rarer_options_match_diffusers() {
    // only_cross_attention, per-layer transformer depths, no mid block,
    // encoder_hid_proj, time_embedding_act_fn, center_input_sample,
    // freq_shift 1 / sin-first sinusoids, 9x9 latent.
    let dir = fixtures().join("extra");
    let unet = load(&dir.join("unet-misc-tiny"));
    let g = golden(&dir.join("unet-misc-tiny.golden.safetensors"));
    extra_case(&unet, &g, "odd", None);
}

/// Half precision runs end to end (norm statistics in f32, attention
/// upcast when the config asks) and stays near the f32 golden. (bf16 is
/// not tested: candle 0.11's CPU matmul has no bf16 kernel.)
#[test]
fn half_precision_runs_close_to_f32() {
    let root = fixtures();
    let dir = root.join("sdxl-tiny/unet");
    let g = golden(&root.join("golden/sdxl-tiny.safetensors"));
    let mut cfg = UNetConfig::from_file(dir.join("config.json")).unwrap();
    cfg.upcast_attention = true;
    let dtype = DType::F16;
    {
        let w = Weights::from_files(&[dir.join("diffusion_pytorch_model.safetensors")], dtype, &Device::Cpu).unwrap();
        let unet = UNet2DConditionModel::load(w.var_builder(), &cfg).unwrap();
        w.finish().unwrap();
        let h = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let added = AddedCond { text_embeds: h(&g["unet.text_embeds"]), time_ids: g["unet.time_ids"].clone() };
        let out = unet.forward(&h(&g["unet.sample"]), &g["unet.timesteps"], &h(&g["unet.encoder_hidden_states"]), Some(&added)).unwrap();
        assert_eq!(out.dtype(), dtype);
        let d = max_abs_diff(&out.to_dtype(DType::F32).unwrap(), &g["unet.out"]);
        println!("f16: max |diff| = {d:e}");
        assert!(d < 0.05, "f16: max |diff| {d}");
    }
}

/// A weight source that hands out zero-stride zeros (no memory) and records
/// every key and shape the model asks for.
struct LayoutRecorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl candle_nn::var_builder::SimpleBackend for LayoutRecorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked get of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// The full-size SD 1.5 / 2.1 / XL (and LCM) UNets ask for exactly the keys
/// and shapes of diffusers' state dict (fixtures/extra/unet-layouts.json,
/// from torch's meta device), without allocating a billion parameters.
#[test]
fn full_size_layouts_match_diffusers_state_dicts() {
    let path = fixtures().join("extra/unet-layouts.json");
    let layouts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, want) in layouts.as_object().unwrap() {
        let cfg = UNetConfig::from_json(&want["config"].to_string(), format!("{name} config")).unwrap();
        let rec = Arc::new(Mutex::new(BTreeMap::new()));
        let vb = VarBuilder::from_backend(Box::new(LayoutRecorder(rec.clone())), DType::F32, Device::Cpu);
        UNet2DConditionModel::load(vb, &cfg).unwrap();
        let keys = rec.lock().unwrap();
        let lines: String = keys
            .iter()
            .map(|(k, s)| format!("{k}:{}\n", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")))
            .collect();
        let params: usize = keys.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(keys.len() as u64, want["num_keys"].as_u64().unwrap(), "{name}: key count");
        assert_eq!(params as u64, want["num_params"].as_u64().unwrap(), "{name}: parameter count");
        assert_eq!(format!("{:016x}", fnv1a64(lines.as_bytes())), want["fnv1a64"].as_str().unwrap(), "{name}: key/shape hash");
    }
}
