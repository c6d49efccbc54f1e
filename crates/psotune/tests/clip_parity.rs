//! Parity of the CLIP text encoders and tokenizers with transformers 5.24,
//! on the committed tiny fixtures (tools/make_fixtures.py): random-weight
//! `CLIPTextModel` (gelu for SD2.1, quick_gelu for SDXL's first encoder) and
//! `CLIPTextModelWithProjection` (SDXL's second), and the real CLIP BPE cut to
//! 1000 merges, padding with "!" (SD2.1, SDXL `tokenizer_2`) or with
//! `<|endoftext|>` (SDXL `tokenizer`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use psotune::models::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use psotune::nn::weights::read_safetensors;
use psotune::nn::Weights;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    read_safetensors(&fixtures().join("golden").join(format!("{name}.safetensors"))).unwrap()
}

fn prompts() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("golden/prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Load `<pipeline>/<folder>` strictly and compare all three outputs (and
/// the early-stopping `penultimate`) with the goldens `<folder>.*`.
fn check_encoder(pipeline: &str, folder: &str, ids_key: &str) {
    let dir = fixtures().join(pipeline).join(folder);
    let cfg = ClipTextConfig::from_file(dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    let model = ClipTextModel::load(weights.var_builder(), &cfg, cfg.has_projection()).unwrap();
    weights.finish().unwrap();

    let g = golden(pipeline);
    let ids = &g[ids_key];
    let out = model.forward(ids).unwrap();
    for (name, ours) in [("last_hidden_state", &out.last_hidden_state), ("penultimate", &out.penultimate), ("pooled", &out.pooled)] {
        let d = max_abs_diff(ours, &g[&format!("{folder}.{name}")]);
        assert!(d < 1e-4, "{pipeline}/{folder} {name}: max |diff| {d}");
    }
    let early = model.penultimate(ids).unwrap();
    assert_eq!(max_abs_diff(&early, &out.penultimate), 0.0);
}

#[test]
fn sd21_text_encoder_matches_transformers() {
    check_encoder("sd21-tiny", "text_encoder", "prompt.input_ids");
}

#[test]
fn sdxl_text_encoders_match_transformers() {
    check_encoder("sdxl-tiny", "text_encoder", "prompt.input_ids");
    check_encoder("sdxl-tiny", "text_encoder_2", "prompt.input_ids_2");
}

#[test]
fn fixture_tokenizers_give_the_golden_prompt_ids() {
    let prompts = prompts();
    for (pipeline, folder, key) in [
        ("sd21-tiny", "tokenizer", "prompt.input_ids"),
        ("sdxl-tiny", "tokenizer", "prompt.input_ids"),
        ("sdxl-tiny", "tokenizer_2", "prompt.input_ids_2"),
    ] {
        let tok = ClipTokenizer::from_dir(fixtures().join(pipeline).join(folder)).unwrap();
        let want: Vec<Vec<i64>> = golden(pipeline)[key].to_vec2().unwrap();
        let got = tok.encode_batch(&prompts).unwrap();
        let got: Vec<Vec<i64>> = got.iter().map(|r| r.iter().map(|&x| i64::from(x)).collect()).collect();
        assert_eq!(got, want, "{pipeline}/{folder}");
        let t = tok.encode_batch_tensor(&prompts, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[prompts.len(), 77]);
    }
}

/// Compare with cases recorded from transformers on any tokenizer folder, e.g.
/// one holding the full 49408-token CLIP vocabulary (not committed):
/// `PSOTUNE_CLIP_TOKENIZER_CASES=cases.json cargo test --test clip_parity -- --ignored`
/// where cases.json is `{"dir": ..., "pad_id": ..., "cases": [[text, ids], ...]}`
/// and `ids = CLIPTokenizer.from_pretrained(dir)(text, max_length=77,
/// truncation=True).input_ids` (unpadded).
#[test]
#[ignore = "needs PSOTUNE_CLIP_TOKENIZER_CASES"]
fn tokenizer_matches_recorded_cases() {
    let paths = std::env::var("PSOTUNE_CLIP_TOKENIZER_CASES").expect("set PSOTUNE_CLIP_TOKENIZER_CASES");
    for path in paths.split(':') {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let tok = ClipTokenizer::from_dir(v["dir"].as_str().unwrap()).unwrap();
        let pad = v["pad_id"].as_u64().unwrap() as u32;
        let mut failures = Vec::new();
        let cases = v["cases"].as_array().unwrap();
        for case in cases {
            let text = case[0].as_str().unwrap();
            let mut want: Vec<u32> = case[1].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            want.resize(77, pad);
            let got = tok.encode(text).unwrap();
            if got != want {
                failures.push(format!("{text:?}\n  ours {got:?}\n  want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{path}: {} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
        eprintln!("{path}: {} cases match", cases.len());
    }
}
