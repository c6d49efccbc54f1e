//! End-to-end on the built-in emoji model (models/emoji, assets/emoji as
//! the repository ships them): `psotune demo` on a small slice of the data
//! writes its report, LoRAs and run; the example configs run as written
//! (with fewer steps and images); `psotune eval` measures a run.

use std::path::{Path, PathBuf};
use std::process::Command;

use psotune::scratch::ScratchDir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tmp(tag: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-emoji-{tag}")).unwrap()
}

fn psotune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_psotune")).args(args).current_dir(root()).env("RUST_BACKTRACE", "0").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A copy of a few assets/emoji lines (and their images): `fit` Noto images
/// to tune on and `val` ones to measure on, so a test samples references
/// for 4 captions instead of 1,700.
fn small_data(dir: &Path) -> PathBuf {
    let assets = root().join("assets/emoji");
    let text = std::fs::read_to_string(assets.join("metadata.jsonl")).unwrap();
    let (mut fit, mut val, mut keep) = (0, 0, String::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["style"] != "noto" {
            continue;
        }
        let n = if v["fold"] == "fit" { &mut fit } else { &mut val };
        if *n >= 4 {
            continue;
        }
        *n += 1;
        let file = v["file_name"].as_str().unwrap();
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::copy(assets.join(file), dir.join(file)).unwrap();
        keep += line;
        keep += "\n";
    }
    assert_eq!((fit, val), (4, 4));
    std::fs::write(dir.join("metadata.jsonl"), keep).unwrap();
    dir.to_path_buf()
}

#[test]
fn demo_writes_a_report_loras_and_a_resumable_run() {
    let dir = tmp("demo");
    let data = small_data(&dir.join("data"));
    let out = dir.join("out");
    let args = ["demo", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "2", "--eval-prompts", "4"];
    let (ok, stdout, stderr) = psotune(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("report:"), "{stdout}");
    for f in ["report.html", "comparison.png", "pytorch_lora_weights.safetensors", "emoji-noto-kohya.safetensors", "run/metrics.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Noto style score") && html.contains("<svg") && html.contains("comparison.png"), "{html}");
    // 4 table rows: base and tuned at 1 and 4 steps.
    assert_eq!(stdout.lines().filter(|l| l.contains("Noto score")).count(), 4, "{stdout}");
    // A second run resumes (nothing left to train) and rewrites the report.
    let (ok, _, stderr) = psotune(&args);
    assert!(ok, "{stderr}");
}

#[test]
fn example_configs_run_on_the_built_in_model() {
    let dir = tmp("examples");
    let data = small_data(&dir.join("data"));
    let few = ["--set", "optim.max-steps=2", "--set", "validation.every=2", "--set", "checkpoint.every=2"];
    let style_out = dir.join("style");
    let data_set = format!("data.images={:?}", data.to_str().unwrap());
    let mut args = vec!["tune", "examples/style.toml", "--set", &data_set, "--out", style_out.to_str().unwrap()];
    args.extend(few);
    let (ok, _, stderr) = psotune(&args);
    assert!(ok, "style: {stderr}");
    assert!(style_out.join("checkpoints/step-000002").is_dir());

    let concept_out = dir.join("concept");
    let mut args = vec!["tune", "examples/concept.toml", "--set", "data.num-class-images=2", "--out", concept_out.to_str().unwrap()];
    args.extend(few);
    let (ok, _, stderr) = psotune(&args);
    assert!(ok, "concept: {stderr}");
    assert!(concept_out.join("checkpoints/step-000002").is_dir());

    // Offline pairs from the model's own samples, then the pairs example on them.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "an emoji of a red apple\nan emoji of a cat face\n").unwrap();
    let pairs = dir.join("pairs");
    let (ok, stdout, stderr) = psotune(&[
        "pairs",
        "--prompt-file",
        prompts.to_str().unwrap(),
        "--samples",
        "3",
        "--reward",
        "{ kind = \"colourfulness\" }",
        "--out",
        pairs.to_str().unwrap(),
    ]);
    assert!(ok, "pairs: {stderr}");
    assert!(stdout.contains("pairs") && pairs.join("pairs.jsonl").is_file(), "{stdout}");
    let manifest = format!("data.manifest={:?}", pairs.join("pairs.jsonl").to_str().unwrap());
    let pairs_out = dir.join("pairs-run");
    let mut args = vec!["tune", "examples/pairs.toml", "--set", &manifest, "--out", pairs_out.to_str().unwrap()];
    args.extend(few);
    let (ok, _, stderr) = psotune(&args);
    assert!(ok, "pairs run: {stderr}");
    assert!(pairs_out.join("checkpoints/step-000002").is_dir());

    // Online PSO as written in the example, for one step of one prompt.
    let online_out = dir.join("online");
    let (ok, _, stderr) = psotune(&[
        "tune",
        "examples/online.toml",
        "--set",
        "optim.max-steps=1",
        "--set",
        "optim.batch-size=1",
        "--set",
        "optim.grad-accum=1",
        "--set",
        "validation.every=1",
        "--set",
        "checkpoint.every=1",
        "--out",
        online_out.to_str().unwrap(),
    ]);
    assert!(ok, "online: {stderr}");
    assert!(online_out.join("checkpoints/step-000001").is_dir() && online_out.join("validation.jsonl").is_file());

    // psotune eval measures the base model and a run side by side.
    let json = dir.join("eval.json");
    let (ok, stdout, stderr) = psotune(&[
        "eval",
        "--run",
        style_out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--prompts",
        "style=noto,fold=val",
        "--num-prompts",
        "4",
        "--steps",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--reward",
        "{ kind = \"colourfulness\" }",
    ]);
    assert!(ok, "eval: {stderr}");
    assert!(stdout.contains("| base | 1 |") && stdout.contains("| style | 1 |") && stdout.contains("mean reward"), "{stdout}");
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
}
