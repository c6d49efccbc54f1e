//! A broken model folder gets a clear error naming what is wrong, never a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
mod common;
use common::copy_dir;
use psotune::nn::weights::read_safetensors;
use psotune::pipeline::{LoadOptions, Pipeline};
use psotune::scratch::ScratchDir;

fn fixture_copy(tag: &str) -> ScratchDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sdxl-tiny");
    let dst = ScratchDir::new(&format!("psotune-broken-{tag}")).unwrap();
    copy_dir(&src, &dst);
    dst
}


fn load_err(dir: &Path) -> String {
    match Pipeline::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_unused_and_misshaped_unet_keys_are_all_named() {
    let dir = fixture_copy("keys");
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut t: HashMap<String, Tensor> = read_safetensors(&file).unwrap();
    t.remove("conv_in.weight").unwrap();
    t.insert("add_embedding.linear_9.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    t.insert("conv_out.bias".into(), Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, &file).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("conv_in.weight"), "{e}");
    assert!(e.contains("add_embedding.linear_9.weight"), "{e}");
    assert!(e.contains("conv_out.bias") && e.contains("[7]"), "{e}");
    assert!(e.contains("unet"), "the error should name the file: {e}");
}

#[test]
fn corrupt_weights_and_configs_are_reported_with_their_file() {
    let dir = fixture_copy("corrupt");
    std::fs::write(dir.join("vae/diffusion_pytorch_model.safetensors"), b"not a safetensors file").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("vae/diffusion_pytorch_model.safetensors"), "{e}");

    let dir = fixture_copy("config");
    std::fs::write(dir.join("unet/config.json"), "{\"block_out_channels\": \"wide\"}").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("unet/config.json"), "{e}");

    let dir = fixture_copy("tokenizer");
    std::fs::remove_file(dir.join("tokenizer_2/merges.txt")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("tokenizer_2"), "{e}");

    let dir = fixture_copy("component");
    std::fs::remove_dir_all(dir.join("text_encoder_2")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("text_encoder_2"), "{e}");
}
