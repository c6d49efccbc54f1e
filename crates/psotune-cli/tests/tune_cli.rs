//! End-to-end: `psotune tune` runs each task for a few steps on the tiny
//! fixture models with generated data, writes every artefact, resumes a
//! killed run bit-exactly, refuses bad data before training, and
//! `psotune export` writes LoRA files that load back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{DType, Device};
use psotune::pipeline::{load, LoadOptions, ModelFolder};
use psotune::scratch::ScratchDir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tmp(tag: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-tune-{tag}")).unwrap()
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_psotune"));
    // Bit-exact resume is promised for the same thread count.
    c.args(args).env("RUST_BACKTRACE", "0").env("RAYON_NUM_THREADS", "1");
    c
}

fn psotune(args: &[&str]) -> (bool, String, String) {
    let out = command(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A 16x16 PNG (the tiny models' size) of one colour with a square.
fn png(path: &Path, size: u32, rgb: [u8; 3]) {
    let img = image::RgbImage::from_fn(size, size, |x, y| if (4..12).contains(&x) && (4..12).contains(&y) { image::Rgb(rgb) } else { image::Rgb([255, 255, 255]) });
    img.save(path).unwrap();
}

/// A style folder with a metadata.jsonl of three captioned images.
fn style_data(dir: &Path) -> PathBuf {
    let d = dir.join("style");
    std::fs::create_dir_all(&d).unwrap();
    let mut lines = String::new();
    for (i, (name, rgb)) in [("red", [220, 20, 20]), ("green", [20, 200, 20]), ("blue", [20, 20, 220])].iter().enumerate() {
        png(&d.join(format!("{i}.png")), 16, *rgb);
        lines += &format!("{{\"file_name\":\"{i}.png\",\"text\":\"an emoji of a {name} square\",\"style\":\"flat\"}}\n");
    }
    std::fs::write(d.join("metadata.jsonl"), lines).unwrap();
    d
}

fn config(model: &str, objective: &str, data: &str, steps: u64) -> String {
    format!(
        "[model]\npath = {:?}\n\n[lora]\nrank = 2\nalpha = 2.0\n\n[objective]\nkind = {objective:?}\n\n{data}\n\
         [optim]\nlr = 1e-3\nbatch-size = 2\ngrad-accum = 1\nmax-steps = {steps}\nseed = 7\n\n\
         [validation]\nseeds = [0, 1]\nevery = 2\n\n[checkpoint]\nevery = 1\nkeep-last = 2\n",
        fixtures().join(model)
    )
}

fn style_section(d: &Path) -> String {
    format!("[data]\nkind = \"style\"\nimages = {:?}\nselect = {{ style = \"flat\" }}\nreferences-per-caption = 2\n", d)
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn style_pso_runs_exports_and_resumes_bit_exactly() {
    let dir = tmp("style");
    let cfg = write(&dir.join("style.toml"), &config("sd21-tiny", "pso", &style_section(&style_data(&dir)), 3));

    // --print-config shows the resolved config with overrides applied.
    let (ok, out, err) = psotune(&["tune", &cfg, "--set", "optim.lr=5e-4", "--print-config"]);
    assert!(ok, "{err}");
    assert!(out.contains("lr = 0.0005") && out.contains("beta = 50.0") && out.contains("[checkpoint]"), "{out}");

    let run = dir.join("run");
    let (ok, out, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 3 steps"), "{out}");
    for f in ["config.toml", "checkpoints/step-000003/weights.safetensors", "checkpoints/step-000002/state.json", "references/step-000000.safetensors", "references/step-000000.png", "samples/step-000000.png", "samples/step-000002.png", "samples/step-000003.png"] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    assert!(!run.join("checkpoints/step-000001").exists(), "keep-last 2");
    let m = metrics(&run);
    assert_eq!(m.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(m.iter().all(|v| v["loss"].as_f64().unwrap().is_finite() && v["acc"].is_number() && v["margin"].is_number() && v["grad_norm"].is_number()));
    // Step 1: adapters start as the base model, so policy == frozen and the
    // PSO loss is exactly log 2.
    assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{:?}", m[0]);
    // A grid: 3 prompts (the captions) x 2 seeds of 16x16 images.
    assert_eq!(image::image_dimensions(run.join("samples/step-000003.png")).unwrap(), (32, 48));
    // A second fresh run into the same directory is refused.
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(!ok && err.contains("--resume"), "{err}");

    // Exports load back into the base UNet.
    let folder = ModelFolder::open(&fixtures().join("sd21-tiny")).unwrap();
    for (format, file) in [("diffusers", "lora.safetensors"), ("kohya", "kohya.safetensors")] {
        let out_file = dir.join(file);
        let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", format, "--out", out_file.to_str().unwrap()]);
        assert!(ok, "{err}");
        let mut unet = load::load_unet(&folder, &LoadOptions::default()).unwrap();
        let set = psotune::export::load_lora(&out_file, &mut unet, &psotune::nn::LoraSwitch::new()).unwrap();
        assert!(!set.is_empty());
    }
    let merged = dir.join("merged");
    let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", "merged", "--out", merged.to_str().unwrap(), "--step", "2"]);
    assert!(ok, "{err}");
    assert!(merged.join("diffusion_pytorch_model.safetensors").is_file() && merged.join("config.json").is_file());
    let w = psotune::nn::Weights::from_files(&[merged.join("diffusion_pytorch_model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    assert!(w.keys().count() > 10);

    // Kill a second run of the same config after its first checkpoint,
    // resume it, and compare with the uninterrupted run.
    let killed = dir.join("killed");
    let mut child = command(&["tune", &cfg, "--out", killed.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let hit = line.contains("checkpoint") && line.ends_with("step-000001");
        seen.push(line);
        if hit {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.ends_with("step-000001")), "{seen:?}");
    assert!(!killed.join("checkpoints/step-000003").exists());
    let (ok, out, err) = psotune(&["tune", "--resume", killed.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("resumed from step") && out.contains("trained 3 steps"), "{out} {err}");
    for f in ["weights.safetensors", "optimizer.safetensors", "state.json"] {
        let a = std::fs::read(run.join("checkpoints/step-000003").join(f)).unwrap();
        let b = std::fs::read(killed.join("checkpoints/step-000003").join(f)).unwrap();
        assert!(a == b, "{f} differs between the uninterrupted and the resumed run");
    }
    assert_eq!(metrics(&killed).len(), 3);
}

/// `[model] gradient-checkpointing` changes memory, not training: the same
/// losses and gradient norms step by step (up to the order of summing).
#[test]
fn gradient_checkpointing_trains_like_without() {
    let dir = tmp("ckpt");
    let cfg = write(&dir.join("style.toml"), &config("sd21-tiny", "pso", &style_section(&style_data(&dir)), 3));
    let mut runs = Vec::new();
    for (name, on) in [("plain", "false"), ("ckpt", "true")] {
        let run = dir.join(name);
        let set = format!("model.gradient-checkpointing={on}");
        let (ok, _, err) = psotune(&["tune", &cfg, "--set", &set, "--set", "validation.every=100", "--out", run.to_str().unwrap()]);
        assert!(ok, "{err}");
        runs.push(metrics(&run));
    }
    assert_eq!(runs[0].len(), 3);
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        for key in ["loss", "grad_norm"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "step {}: {key} {x} vs {y}", a["step"]);
        }
    }
}

#[test]
fn pairs_and_concept_tasks_run() {
    let dir = tmp("tasks");
    // Pairs: chosen red squares, rejected blue ones.
    let pairs = dir.join("pairs");
    std::fs::create_dir_all(&pairs).unwrap();
    png(&pairs.join("c.png"), 16, [220, 20, 20]);
    png(&pairs.join("r.png"), 16, [20, 20, 220]);
    let line = r#"{"prompt":"an emoji of a square","chosen":"c.png","rejected":"r.png"}"#;
    std::fs::write(pairs.join("pairs.jsonl"), format!("{line}\n{line}\n")).unwrap();
    let data = format!("[data]\nkind = \"pairs\"\nmanifest = {:?}\n", pairs.join("pairs.jsonl"));
    for objective in ["diffusion-dpo", "sft"] {
        let cfg = write(&dir.join(format!("pairs-{objective}.toml")), &config("sd21-tiny", objective, &data, 2));
        let run = dir.join(format!("run-pairs-{objective}"));
        let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
        assert!(ok, "{objective}: {err}");
        let m = metrics(&run);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["acc"].is_null(), objective == "sft");
    }

    // Full fine-tuning of chosen layers (sft): exported merged only; pso
    // needs LoRA for its frozen model.
    let cfg = write(&dir.join("pairs-full.toml"), &config("sd21-tiny", "sft", &data, 1));
    let run = dir.join("run-full");
    let full = "lora.full=['up_blocks\\.1\\.attentions\\.0\\.proj_out']";
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap(), "--set", full]);
    assert!(ok, "{err}");
    let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", "kohya", "--out", dir.join("x.safetensors").to_str().unwrap()]);
    assert!(!ok && err.contains("--format merged"), "{err}");
    let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", "merged", "--out", dir.join("merged").to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("run-full-pso").to_str().unwrap(), "--set", full, "--set", "objective.kind=pso"]);
    assert!(!ok && err.contains("frozen model"), "{err}");

    // Concept: 3 instance images, 3 class references.
    let inst = dir.join("instance");
    std::fs::create_dir_all(&inst).unwrap();
    for i in 0..3 {
        png(&inst.join(format!("{i}.png")), 16, [200, 100 + 40 * i as u8, 20]);
    }
    let data = format!(
        "[data]\nkind = \"concept\"\ninstance-dir = {:?}\ninstance-prompt = \"an emoji of sks cat\"\nclass-prompt = \"an emoji of a cat\"\nnum-class-images = 3\nrefresh-references-every = 1\n",
        inst
    );
    let cfg = write(&dir.join("concept.toml"), &config("sd21-tiny", "pso-hinge", &data, 2));
    let run = dir.join("run-concept");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    // Refreshed references: before training and after step 1.
    assert!(run.join("references/step-000000.safetensors").is_file() && run.join("references/step-000001.safetensors").is_file());
}

#[test]
fn sdxl_style_sft_distilled_runs() {
    let dir = tmp("sdxl");
    let cfg = write(&dir.join("sdxl.toml"), &config("sdxl-tiny", "sft-distilled", &style_section(&style_data(&dir)), 1));
    let run = dir.join("run");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap(), "--set", "validation.prompts=[\"a cat\"]"]);
    assert!(ok, "{err}");
    assert_eq!(metrics(&run).len(), 1);
    assert_eq!(image::image_dimensions(run.join("samples/step-000001.png")).unwrap(), (32, 16));
}

#[test]
fn bad_data_fails_with_file_and_line_before_training() {
    let dir = tmp("bad");
    let d = style_data(&dir);
    png(&d.join("big.png"), 24, [0, 0, 0]);
    let mut lines = std::fs::read_to_string(d.join("metadata.jsonl")).unwrap();
    lines += "{\"file_name\":\"big.png\",\"text\":\"a big square\",\"style\":\"flat\"}\n";
    std::fs::write(d.join("metadata.jsonl"), &lines).unwrap();
    let cfg = write(&dir.join("bad.toml"), &config("sd21-tiny", "pso", &style_section(&d), 2));
    let run = dir.join("run");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("metadata.jsonl:4") && err.contains("24x24") && err.contains("16x16"), "{err}");
    assert!(!run.join("metrics.jsonl").exists() && !run.join("references").exists());

    std::fs::write(d.join("metadata.jsonl"), "{\"file_name\":\"0.png\",\"text\":\"ok\",\"style\":\"flat\"}\n{\"file_name\":\"0.png\",\"style\":\"flat\"}\n").unwrap();
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("run2").to_str().unwrap()]);
    assert!(!ok && err.contains("metadata.jsonl:2") && err.contains("missing `text`"), "{err}");
    // Unknown config keys name the file.
    let (ok, _, err) = psotune(&["tune", &cfg, "--set", "optim.learning-rate=1"]);
    assert!(!ok && err.contains("bad.toml") && err.contains("learning-rate"), "{err}");
    // Training timesteps past the schedule name the key and the model's own.
    let good = write(&dir.join("good.toml"), &config("sd21-tiny", "pso", &style_section(&style_data(&dir.join("good"))), 2));
    let (ok, _, err) = psotune(&["tune", &good, "--out", dir.join("run3").to_str().unwrap(), "--set", "objective.timesteps=[1000]"]);
    assert!(!ok && err.contains("objective.timesteps = [1000]") && err.contains("sampling timesteps"), "{err}");
}

#[test]
fn pickapic_parquet_pairs_run() {
    let dir = tmp("pickapic");
    let parquet = fixtures().join("pickapic/tiny.parquet");
    let data = format!("[data]\nkind = \"pairs\"\nmanifest = {parquet:?}\n");
    let cfg = write(&dir.join("pickapic.toml"), &config("sd21-tiny", "pso", &data, 2));
    let run = dir.join("run");
    let (ok, out, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 2 steps"), "{out}");
    let m = metrics(&run);
    assert_eq!(m.len(), 2);
    assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{:?}", m[0]);
    // Validation rows: the two distinct captions of the 4 decided rows.
    assert_eq!(image::image_dimensions(run.join("samples/step-000002.png")).unwrap(), (32, 32));
    // The explicit key reads a parquet file whatever its name; a bad JPEG
    // stops the run before training, naming file, row and column.
    let bad = dir.join("bad.data");
    std::fs::copy(fixtures().join("pickapic/bad-jpeg.parquet"), &bad).unwrap();
    let data = format!("[data]\nkind = \"pairs\"\nmanifest = {bad:?}\nformat = \"parquet\"\n");
    let cfg = write(&dir.join("bad.toml"), &config("sd21-tiny", "pso", &data, 2));
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("run-bad").to_str().unwrap()]);
    assert!(!ok && err.contains("bad.data") && err.contains("row 1, column `jpg_1`"), "{err}");
    assert!(!dir.join("run-bad/metrics.jsonl").exists());
}

#[test]
fn text_encoder_lora_trains_exports_and_samples() {
    let dir = tmp("te-lora");
    let cfg = write(&dir.join("te.toml"), &config("sdxl-tiny", "pso", &style_section(&style_data(&dir)), 2));
    let run = dir.join("run");
    let sets = ["--set", "lora.text-encoder=true", "--set", "lora.text-encoder-rank=3", "--set", "validation.prompts=[\"a cat\"]"];
    let mut args = vec!["tune", cfg.as_str(), "--out", run.to_str().unwrap()];
    args.extend(sets);
    let (ok, _, err) = psotune(&args);
    assert!(ok, "{err}");
    // Adapters start at zero: step 1 is log 2 even with the embeddings in the graph.
    let m = metrics(&run);
    assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{:?}", m[0]);
    let w = psotune::nn::weights::read_safetensors(&run.join("checkpoints/step-000002/weights.safetensors")).unwrap();
    let te_a = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight";
    assert_eq!(w[te_a].dims(), [3, 32]);
    assert!(w.contains_key("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"));
    // Training moved the text-encoder adapters.
    let b = &w["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"];
    assert!(b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);

    for (format, file, key) in [
        ("diffusers", "te.safetensors", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"),
        ("kohya", "te-kohya.safetensors", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"),
    ] {
        let out_file = dir.join(file);
        let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", format, "--out", out_file.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(psotune::nn::weights::read_safetensors(&out_file).unwrap().contains_key(key), "{format}");
        let (ok, _, err) = psotune(&["sample", "--model", fixtures().join("sdxl-tiny").to_str().unwrap(), "--lora", out_file.to_str().unwrap(), "--prompt", "a cat", "--out", dir.join(format).to_str().unwrap()]);
        assert!(ok, "{format}: {err}");
    }
    let merged = dir.join("merged");
    let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", "merged", "--out", merged.to_str().unwrap()]);
    assert!(ok, "{err}");
    for f in ["diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "text_encoder/config.json", "text_encoder_2/model.safetensors"] {
        assert!(merged.join(f).is_file(), "missing {f}");
    }
}

#[test]
fn one_step_transfer_term_is_zero_at_the_start_and_resumes_bit_exactly() {
    let dir = tmp("transfer");
    let text = config("sd21-tiny", "pso", &style_section(&style_data(&dir)), 3).replace("kind = \"pso\"\n", "kind = \"pso\"\none-step-transfer = 5.0\n");
    let cfg = write(&dir.join("style.toml"), &text);
    let run = dir.join("run");
    let (ok, out, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("trained 3 steps"), "{out}");
    let m = metrics(&run);
    // Adapters start as the base model: tuned and frozen chains agree, so
    // the 1-step target is the frozen 1-step output and the term is 0.
    assert!(m[0]["transfer"].as_f64().unwrap().abs() < 1e-10, "{:?}", m[0]);
    assert!(m[2]["transfer"].as_f64().unwrap() > 0.0, "{:?}", m[2]);

    // The term draws its noise from the checkpointed stream: a run killed
    // after its first checkpoint and resumed ends with the same weights.
    let killed = dir.join("killed");
    let mut child = command(&["tune", &cfg, "--out", killed.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().ends_with("step-000001") {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    let (ok, _, err) = psotune(&["tune", "--resume", killed.to_str().unwrap()]);
    assert!(ok, "{err}");
    let a = std::fs::read(run.join("checkpoints/step-000003/weights.safetensors")).unwrap();
    let b = std::fs::read(killed.join("checkpoints/step-000003/weights.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ");

    // Regression (review defect 2): the term is part of each micro-batch's
    // loss, not one more micro-batch. At step 1 its gradient is exactly 0,
    // so the gradient (and its norm) equals a run without the term; it
    // used to be half of it.
    let plain = dir.join("plain");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", plain.to_str().unwrap(), "--set", "objective.one-step-transfer=0", "--set", "optim.max-steps=1"]);
    assert!(ok, "{err}");
    assert_eq!(metrics(&plain)[0]["grad_norm"], m[0]["grad_norm"], "{:?} vs {:?}", metrics(&plain)[0], m[0]);

    // Full tuning has no frozen model to transfer from.
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("full").to_str().unwrap(), "--set", "lora.full=[\"conv_out\"]", "--set", "objective.kind=sft"]);
    assert!(!ok && err.contains("one-step-transfer"), "{err}");
}

/// Regression (review defect 3): a run started from a LoRA file compares
/// with the model it starts from (the file's LoRA included), so its first
/// PSO loss is exactly log 2 as for fresh adapters; with the file's LoRA
/// left out of the frozen model it was not.
#[test]
fn init_from_lora_file_anchors_the_frozen_model_at_the_start() {
    let dir = tmp("init-from");
    let data = style_section(&style_data(&dir));
    let sft = write(&dir.join("sft.toml"), &config("sd21-tiny", "sft", &data, 2));
    let first = dir.join("first");
    let (ok, _, err) = psotune(&["tune", &sft, "--out", first.to_str().unwrap()]);
    assert!(ok, "{err}");
    let file = dir.join("start.safetensors");
    let (ok, _, err) = psotune(&["export", first.to_str().unwrap(), "--format", "diffusers", "--out", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let text = config("sd21-tiny", "pso", &data, 2).replace("[lora]\n", &format!("[lora]\ninit-from = {file:?}\n"));
    let cfg = write(&dir.join("pso.toml"), &text);
    let run = dir.join("run");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    let m = metrics(&run);
    assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{:?}", m[0]);
    assert_eq!(m[0]["margin"].as_f64(), Some(0.0), "{:?}", m[0]);
    assert!(m[0]["grad_norm"].as_f64().unwrap() > 0.0);
    // The file's LoRA took part: the first gradient differs from a fresh start's.
    let fresh = dir.join("fresh");
    let (ok, _, err) = psotune(&["tune", &write(&dir.join("fresh.toml"), &config("sd21-tiny", "pso", &data, 1)), "--out", fresh.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_ne!(metrics(&fresh)[0]["grad_norm"], m[0]["grad_norm"]);
}

/// Regression (review defect 4): an LCM UNet with a guidance embedding
/// trains with it. `model.guidance` reaches the training predictions (the
/// first gradient changes with it), and the first PSO loss is log 2.
#[test]
fn lcm_guidance_embedding_reaches_training() {
    let dir = tmp("lcm");
    let cfg = write(&dir.join("lcm.toml"), &config("lcm-tiny", "pso", &style_section(&style_data(&dir)), 1));
    let mut norms = Vec::new();
    for g in ["8.5", "2.0"] {
        let run = dir.join(format!("g{g}"));
        let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap(), "--set", &format!("model.guidance={g}")]);
        assert!(ok, "{err}");
        let m = metrics(&run);
        assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{:?}", m[0]);
        norms.push(m[0]["grad_norm"].clone());
    }
    assert_ne!(norms[0], norms[1], "the guidance scale must reach the UNet in training");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("bad").to_str().unwrap(), "--set", "model.guidance=-1"]);
    assert!(!ok && err.contains("model.guidance"), "{err}");
}

/// Pair objectives trained at several timesteps log their pairs by
/// timestep: every pair of the step counted once, and at step 1 (policy =
/// frozen model) every logit 0 and every loss log 2.
#[test]
fn pairs_are_reported_by_training_timestep() {
    let dir = tmp("by-timestep");
    let cfg = write(&dir.join("style.toml"), &config("sd21-tiny", "pso", &style_section(&style_data(&dir)), 2));
    let run = dir.join("run");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap(), "--set", "objective.timesteps=[999,500,250]", "--set", "optim.grad-accum=2"]);
    assert!(ok, "{err}");
    let m = metrics(&run);
    for v in &m {
        let by = v["by_timestep"].as_object().unwrap_or_else(|| panic!("{v}"));
        assert!(by.keys().all(|k| ["999", "500", "250"].contains(&k.as_str())), "{v}");
        assert_eq!(by.values().map(|s| s["pairs"].as_u64().unwrap()).sum::<u64>(), 4, "batch 2 x grad-accum 2: {v}");
    }
    for s in m[0]["by_timestep"].as_object().unwrap().values() {
        assert!((s["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6 && s["margin"].as_f64() == Some(0.0), "{s}");
    }
    // One timestep: nothing to break down.
    let single = dir.join("single");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", single.to_str().unwrap(), "--set", "optim.max-steps=1"]);
    assert!(ok, "{err}");
    assert!(metrics(&single)[0].get("by_timestep").is_none());
}

/// Mixed precision: an f16 base (and a bf16 one, computed through f32 on
/// the CPU) trains 20 PSO steps without a NaN; the LoRA factors are f32
/// master weights, they stay close to the all-f32 run's, and the exported
/// file is f32.
#[test]
fn half_precision_bases_train_f32_adapters_close_to_f32() {
    let dir = tmp("mixed");
    let cfg = write(&dir.join("style.toml"), &config("sd21-tiny", "pso", &style_section(&style_data(&dir)), 20));
    let mut factors = Vec::new();
    for dt in ["f32", "f16", "bf16"] {
        let run = dir.join(dt);
        let set = format!("model.dtype=\"{dt}\"");
        let (ok, _, err) = psotune(&["tune", &cfg, "--set", &set, "--set", "validation.every=100", "--set", "checkpoint.every=20", "--out", run.to_str().unwrap()]);
        assert!(ok, "{dt}: {err}");
        let m = metrics(&run);
        assert_eq!(m.len(), 20, "{dt}");
        assert!(m.iter().all(|v| v["loss"].as_f64().unwrap().is_finite() && v["grad_norm"].as_f64().unwrap().is_finite()), "{dt}: {m:?}");
        // f16 runs scale the loss dynamically and say so; f32 and bf16 do not.
        assert_eq!(m.iter().all(|v| v["loss_scale"].as_f64().is_some_and(|s| s >= 1.0) && v["skipped"].is_u64()), dt == "f16", "{dt}: {:?}", m[0]);
        let w = psotune::nn::weights::read_safetensors(&run.join("checkpoints/step-000020/weights.safetensors")).unwrap();
        assert!(w.values().all(|t| t.dtype() == DType::F32), "{dt}: checkpointed factors are not f32");
        let out_file = dir.join(format!("{dt}.safetensors"));
        let (ok, _, err) = psotune(&["export", run.to_str().unwrap(), "--format", "diffusers", "--out", out_file.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(psotune::nn::weights::read_safetensors(&out_file).unwrap().values().all(|t| t.dtype() == DType::F32), "{dt}: export");
        factors.push(w);
    }
    // Relative L2 distance of all factors to the f32 run's. Measured
    // 2026-12-04: f16 0.0024, bf16 0.0039 (lora_B alone, which starts at 0:
    // 0.017 and 0.037).
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, w) in ["f16", "bf16"].iter().zip(&factors[1..]) {
        let (mut num, mut den) = (0f64, 0f64);
        for (k, a) in &factors[0] {
            for (x, y) in flat(a).iter().zip(flat(&w[k])) {
                num += ((x - y) as f64).powi(2);
                den += (*x as f64).powi(2);
            }
        }
        let rel = (num / den).sqrt();
        assert!(rel < 0.02, "{name}: relative distance to the f32 run {rel}");
        assert!(rel > 0.0, "{name}: bit-identical to f32, so the base was not in half precision");
    }
}

/// `model.device` / `--device`: not saved in the run directory (a run moves
/// between machines), given again on `--resume`; a CUDA device in a CPU
/// build, or a bad name, is a clear error.
#[test]
fn device_is_chosen_per_invocation_not_saved() {
    let dir = tmp("device");
    let cfg = write(&dir.join("style.toml"), &config("sd21-tiny", "pso", &style_section(&style_data(&dir)), 1));
    let run = dir.join("run");
    let (ok, _, err) = psotune(&["tune", &cfg, "--set", "model.device=\"cpu\"", "--set", "validation.every=100", "--out", run.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!std::fs::read_to_string(run.join("config.toml")).unwrap().contains("device ="));
    let (ok, _, err) = psotune(&["tune", "--resume", run.to_str().unwrap(), "--device", "cpu"]);
    assert!(ok, "{err}");
    let (ok, _, err) = psotune(&["tune", &cfg, "--device", "tpu", "--out", dir.join("x").to_str().unwrap()]);
    assert!(!ok && err.contains("unknown device \"tpu\""), "{err}");
    if !candle_core::utils::cuda_is_available() {
        let (ok, _, err) = psotune(&["tune", &cfg, "--device", "cuda:0", "--out", dir.join("y").to_str().unwrap()]);
        assert!(!ok && err.contains("built without CUDA"), "{err}");
    }
}
