//! End-to-end: the `psotune sample` binary on the tiny fixture pipelines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use psotune::nn::weights::read_safetensors;
use psotune::pipeline::image::load_image;
use psotune::scratch::ScratchDir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tmp(tag: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-cli-{tag}")).unwrap()
}

fn psotune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_psotune")).args(args).env("RUST_BACKTRACE", "0").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn write_latents(path: &Path, t: &Tensor) {
    let mut m = HashMap::new();
    m.insert("latents".to_string(), t.clone());
    candle_core::safetensors::save(&m, path).unwrap();
}

#[test]
fn init_latents_reproduce_the_diffusers_image() {
    for model in ["sd21-tiny", "sdxl-tiny"] {
        let dir = tmp(model);
        let golden = read_safetensors(&fixtures().join(format!("golden/{model}.safetensors"))).unwrap();
        let latents = dir.join("latents.safetensors");
        write_latents(&latents, &golden["sample.init_latents"]);
        let model_dir = fixtures().join(model);
        let out_dir = dir.join("out");
        let (ok, stdout, stderr) = psotune(&[
            "sample",
            "--model",
            model_dir.to_str().unwrap(),
            "--prompt",
            "a photo of a dog",
            "--init-latents",
            latents.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        // The fixture folders' scheduler says Euler-ancestral + trailing: the
        // defaults must pick the 1-step Turbo sampler without being told.
        assert!(stderr.contains("sampler turbo timesteps [999]"), "{stderr}");
        let png = PathBuf::from(stdout.lines().next().unwrap());
        let got = ((load_image(&png, &Device::Cpu).unwrap() + 1.0).unwrap() / 2.0).unwrap();
        let want = golden["sample.turbo1.image"].get(0).unwrap().to_dtype(DType::F32).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // 8-bit PNG: one quantisation step plus rounding at the boundary.
        assert!(diff <= 1.0 / 255.0 + 1e-4, "{model}: PNG differs from diffusers by {diff}");
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_writes_one_png_per_image() {
    let dir = tmp("seed");
    let model = fixtures().join("sd21-tiny");
    let run = |out: &Path| {
        let (ok, stdout, stderr) = psotune(&[
            "sample", "--model", model.to_str().unwrap(), "--prompt", "a dog", "--prompt", "a cat",
            "--steps", "4", "--seed", "7", "--num-images", "2", "--out", out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        stdout.lines().map(PathBuf::from).collect::<Vec<_>>()
    };
    let a = run(&dir.join("a"));
    let b = run(&dir.join("b"));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{} vs {}", x.display(), y.display());
    }
    assert_ne!(std::fs::read(&a[0]).unwrap(), std::fs::read(&a[2]).unwrap(), "different seeds gave the same image");
}

#[test]
fn bad_input_gives_a_clear_error_and_nonzero_exit() {
    let dir = tmp("bad");
    let model = fixtures().join("sd21-tiny");
    let out = dir.join("out");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--model".into(), dir.to_str().unwrap().into()], "model_index.json"),
        (vec!["--model".into(), model.to_str().unwrap().into(), "--timesteps".into(), "5,10".into()], "decrease"),
        (vec!["--model".into(), model.to_str().unwrap().into(), "--width".into(), "15".into()], "multiple"),
        (vec!["--model".into(), model.to_str().unwrap().into(), "--dtype".into(), "f8".into()], "--dtype"),
        (vec!["--model".into(), model.to_str().unwrap().into(), "--init-latents".into(), "/nonexistent.st".into()], "/nonexistent.st"),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = vec!["sample".into(), "--prompt".into(), "x".into(), "--out".into(), out.to_str().unwrap().into()];
        args.extend(extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = psotune(&a);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    // Latents of the wrong shape name both shapes.
    let lat = dir.join("wrong.safetensors");
    write_latents(&lat, &Tensor::zeros((1, 4, 3, 3), DType::F32, &Device::Cpu).unwrap());
    let (ok, _, stderr) = psotune(&[
        "sample", "--model", model.to_str().unwrap(), "--prompt", "x", "--init-latents", lat.to_str().unwrap(), "--out", out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("[1, 4, 3, 3]"), "{stderr}");
}

/// `--lora` in either format changes the image; both formats give the same
/// image; `--lora-scale 0` gives the base model's image; a LoRA for another
/// UNet is a clear error naming the modules.
#[test]
fn lora_files_of_both_formats_sample() {
    let dir = tmp("lora");
    let model = fixtures().join("sd21-tiny");
    let run = |out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec!["sample", "--model", model.to_str().unwrap(), "--prompt", "a dog", "--seed", "3", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = psotune(&args);
        (ok, stdout.lines().next().map(|l| std::fs::read(l).unwrap()), stderr)
    };
    let peft = fixtures().join("lora/sd21-tiny.peft.safetensors");
    let kohya = fixtures().join("lora/sd21-tiny.kohya.safetensors");
    let (ok, base, e) = run("base", &[]);
    assert!(ok, "{e}");
    let (ok, with_peft, e) = run("peft", &["--lora", peft.to_str().unwrap()]);
    assert!(ok && e.contains("121 adapters"), "{e}");
    let (ok, with_kohya, e) = run("kohya", &["--lora", kohya.to_str().unwrap()]);
    assert!(ok, "{e}");
    let (ok, scale0, e) = run("zero", &["--lora", kohya.to_str().unwrap(), "--lora-scale", "0"]);
    assert!(ok, "{e}");
    assert_ne!(base, with_peft, "the LoRA did not change the image");
    assert_eq!(with_peft, with_kohya, "the two formats of one LoRA must give the same image");
    assert_eq!(base, scale0, "--lora-scale 0 must be the base model");
    let wrong = fixtures().join("lora/sdxl-tiny.peft.safetensors");
    let (ok, _, e) = run("wrong", &["--lora", wrong.to_str().unwrap()]);
    assert!(!ok && e.contains("sdxl-tiny.peft.safetensors") && !e.contains("panicked"), "{e}");
}
