//! End-to-end: every stage of `emoji-world all` on a dozen images with a
//! recipe of a few steps, then a second run that finds every stage done.
//! Proves the stages fit together (tokenizer -> VAE -> teacher -> student
//! -> f16 -> evaluator -> report -> assets) and that diffusers-layout output
//! comes out; the real build differs only in its data and recipe.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

const RECIPE: &str = r#"
[vae]
steps = 2
batch = 4
warmup = 1
checkpoint-every = 1
[teacher]
steps = 2
batch = 4
warmup = 1
checkpoint-every = 1
[distill]
steps = 2
batch = 4
warmup = 1
checkpoint-every = 1
[evaluator]
epochs = 1
batch = 4
[report]
prompts = 4
teacher-steps = [2]
student-steps = [1, 4]
batch = 4
grid-prompts = 2
"#;

/// Twelve images (Twemoji and Noto of six concepts, two of them in the
/// evaluator's validation fold) and the CLIP merges the tokenizer stage cuts.
fn tiny_data(dir: &Path) {
    let assets = root().join("assets/emoji");
    let text = std::fs::read_to_string(assets.join("metadata.jsonl")).unwrap();
    let mut concepts: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (c, fold) = (v["concept"].as_str().unwrap().to_string(), v["fold"].as_str().unwrap().to_string());
        if v["split"] == "train" && !concepts.iter().any(|(k, _)| *k == c) {
            let same_fold = concepts.iter().filter(|(_, f)| *f == fold).count();
            if (fold == "val" && same_fold < 2) || (fold == "fit" && same_fold < 4) {
                concepts.push((c, fold));
            }
        }
    }
    let mut keep = String::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if concepts.iter().any(|(c, _)| v["concept"] == c.as_str()) && v["style"] != "openmoji" {
            let file = v["file_name"].as_str().unwrap();
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::copy(assets.join(file), dir.join(file)).unwrap();
            keep += line;
            keep += "\n";
        }
    }
    std::fs::write(dir.join("metadata.jsonl"), keep).unwrap();
    for f in ["LICENSES.md", "holdout.json"] {
        std::fs::copy(assets.join(f), dir.join(f)).unwrap();
    }
    // The shipped tokenizer's merges are a valid (shorter) CLIP BPE file.
    std::fs::copy(root().join("models/emoji/tokenizer/merges.txt"), dir.join("clip-bpe.txt")).unwrap();
}

fn emoji_world(dir: &Path) -> (bool, String) {
    let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_emoji-world"))
        .args(["all", "--data", &p("data"), "--work", &p("work"), "--out", &p("model"), "--assets", &p("assets"), "--recipe", &p("recipe.toml")])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn all_stages_on_tiny_data_then_nothing_left_to_do() {
    let dir = psotune::scratch::ScratchDir::new("emoji-world-stages").unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    tiny_data(&dir.join("data"));
    std::fs::write(dir.join("recipe.toml"), RECIPE).unwrap();

    let (ok, log) = emoji_world(&dir);
    assert!(ok, "{log}");
    for f in [
        "model/model_index.json",
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/text_encoder/model.safetensors",
        "model/vae/diffusion_pytorch_model.safetensors",
        "model/tokenizer/vocab.json",
        "model/evaluator/model.safetensors",
        "work/report/report.md",
        "work/report/teacher-vs-student.png",
        "assets/metadata.jsonl",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing\n{log}");
    }
    // The shipped folder is float16 and psotune samples from it.
    let unet = psotune::nn::weights::read_safetensors(&dir.join("model/unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(unet.values().all(|t| t.dtype() == candle_core::DType::F16));
    let pipe = psotune::pipeline::Pipeline::load(&dir.join("model"), &Default::default()).unwrap();
    let img = pipe.sample(&psotune::pipeline::SampleRequest { prompts: vec!["an emoji of a cat".into()], ..Default::default() }).unwrap();
    assert_eq!(img.images.dims(), &[1, 3, 32, 32]);
    let md = std::fs::read_to_string(dir.join("work/report/report.md")).unwrap();
    assert!(md.contains("| student | lcm | 4 |") && md.contains("| teacher | ddim | 2 |"), "{md}");

    let (ok, log) = emoji_world(&dir);
    assert!(ok, "{log}");
    for stage in ["vae", "teacher", "distill", "evaluator", "report"] {
        assert!(log.contains(&format!("{stage}: done")), "{stage} ran again:\n{log}");
    }
}
