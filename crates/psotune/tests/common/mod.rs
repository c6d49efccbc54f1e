//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use psotune::export::{save_kohya, save_peft, UNetLayout};
use psotune::models::unet::{UNet2DConditionModel, UNetConfig};
use psotune::nn::{LoraSet, Weights};
use psotune::scratch::ScratchDir;

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Copy a fixture folder somewhere it can be broken or modified.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// A scratch folder for one test, removed when dropped.
pub fn scratch(tag: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-test-{tag}")).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Load a diffusers `unet` folder strictly: every key used, none missing.
pub fn load_unet(dir: &Path) -> UNet2DConditionModel {
    let cfg = UNetConfig::from_file(dir.join("config.json")).unwrap();
    let w = Weights::from_files(&[dir.join("diffusion_pytorch_model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    let unet = UNet2DConditionModel::load(w.var_builder(), &cfg).unwrap();
    w.finish().unwrap();
    unet
}

/// `<stem>.peft.safetensors` and `<stem>.kohya.safetensors` in `dir`,
/// in f16 to keep fixtures/ small (both sides read the same rounded
/// values; loading converts to the model's dtype).
pub fn export_both(set: &LoraSet, layout: &UNetLayout, dir: &Path, stem: &str) -> [PathBuf; 2] {
    let peft = dir.join(format!("{stem}.peft.safetensors"));
    let kohya = dir.join(format!("{stem}.kohya.safetensors"));
    let mut weights = set.weights();
    for w in &mut weights {
        w.lora_a = w.lora_a.to_dtype(DType::F16).unwrap();
        w.lora_b = w.lora_b.to_dtype(DType::F16).unwrap();
    }
    save_peft(&peft, &weights).unwrap();
    save_kohya(&kohya, &weights, layout, layout.default_names()).unwrap();
    [peft, kohya]
}
