//! Parity of the native CLIP-family scorers with their Python references,
//! on the tiny random models of fixtures/rewards/ (tools/make_reward_fixtures.py):
//! Pillow's resize, each scorer's preprocessing (transformers'
//! CLIPImageProcessor with the PIL backend, open_clip's and OpenAI CLIP's
//! torchvision transforms), token ids, embeddings and final scores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use psotune::nn::weights::read_safetensors;
use psotune::pipeline::image::{load_image, save_png};
use psotune::reward::preprocess::quantize;
use psotune::reward::resample::{resize, Filter, RgbU8};
use psotune::reward::{load_clip_score, load_hpsv2, load_native_reward, load_pickscore, AestheticScorer, ImageTextScorer, NativeReward, Reward};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/rewards")
}

struct Golden {
    t: HashMap<String, Tensor>,
    images: Vec<String>,
    prompts: Vec<String>,
    resize: Vec<(String, usize, usize, String)>,
}

fn golden() -> Golden {
    let t = read_safetensors(&dir().join("golden.safetensors")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap();
    let strs = |k: &str| -> Vec<String> { meta[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    let resize = meta["resize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap().into(), c[1].as_u64().unwrap() as usize, c[2].as_u64().unwrap() as usize, c[3].as_str().unwrap().into()))
        .collect();
    Golden { t, images: strs("images"), prompts: strs("prompts"), resize }
}

/// A fixture PNG as the scorers get it from the pipeline: [1, 3, H, W] in [-1, 1].
fn image_tensor(name: &str) -> Tensor {
    load_image(&dir().join("images").join(name), &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn image_u8(name: &str) -> RgbU8 {
    quantize(&image_tensor(name)).unwrap().remove(0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn vec_diff(a: &[f32], b: &Tensor) -> f32 {
    let b: Vec<f32> = b.to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn resize_matches_pillow_bit_for_bit() {
    let g = golden();
    for (i, (name, w, h, filter)) in g.resize.iter().enumerate() {
        let filter = if filter == "bilinear" { Filter::Bilinear } else { Filter::Bicubic };
        let ours = resize(&image_u8(name), *w, *h, filter);
        let want: Vec<u8> = g.t[&format!("resize.{i}")].flatten_all().unwrap().to_vec1().unwrap();
        let differing = ours.data.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!((ours.width, ours.height), (*w, *h));
        assert_eq!(differing, 0, "case {i} ({name} -> {w}x{h} {filter:?}): {differing} bytes differ");
    }
}

/// Each scorer's pixel values against its reference preprocessing, per image.
fn check_pixels(g: &Golden, key: &str, pixels: impl Fn(&RgbU8) -> Tensor) {
    for name in &g.images {
        let d = max_diff(&pixels(&image_u8(name)), &g.t[&format!("{key}.pixel_values.{name}")]);
        assert!(d < 1e-5, "{key} {name}: max |pixel diff| {d}");
    }
}

fn scorer_pixels(s: &ImageTextScorer) -> impl Fn(&RgbU8) -> Tensor + '_ {
    |img| s.preprocess().pixel_values(std::slice::from_ref(img), &Device::Cpu).unwrap().squeeze(0).unwrap()
}

fn ids_of(s: &ImageTextScorer, prompts: &[String]) -> Tensor {
    s.tokenizer().encode_batch_tensor(prompts, &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap()
}

/// Pixels, ids, both embeddings and the scores of one image-text scorer,
/// scoring each PNG through the `Reward` trait as the training loop will.
fn check_image_text(mut s: ImageTextScorer, key: &str, score_key: &str) -> Vec<f32> {
    let g = golden();
    check_pixels(&g, key, scorer_pixels(&s));
    assert_eq!(max_diff(&ids_of(&s, &g.prompts), &g.t[&format!("{key}.input_ids")]), 0.0, "{key} token ids");
    let imgs: Vec<RgbU8> = g.images.iter().map(|n| image_u8(n)).collect();
    let d = max_diff(&s.image_embeds(&imgs).unwrap(), &g.t[&format!("{key}.image_embeds")]);
    assert!(d < 1e-4, "{key} image embeds: {d}");
    let d = max_diff(&s.text_embeds(&g.prompts).unwrap(), &g.t[&format!("{key}.text_embeds")]);
    assert!(d < 1e-4, "{key} text embeds: {d}");
    let scores: Vec<f32> = g.images.iter().zip(&g.prompts).map(|(n, p)| s.score(&image_tensor(n), std::slice::from_ref(p)).unwrap()[0]).collect();
    let d = vec_diff(&scores, &g.t[score_key]);
    assert!(d < 1e-4, "{key} scores {scores:?}: max diff {d}");
    println!("{score_key}: ours {scores:?}, max |diff| {d:e}");
    scores
}

#[test]
fn clip_score_matches_transformers_and_torchmetrics() {
    let s = load_clip_score(&dir().join("clip-vit"), None, &Device::Cpu).unwrap();
    let scores = check_image_text(s, "clip-vit", "clip-score.scores");
    // One pair's cosine is negative: torchmetrics clamps it to 0.
    assert!(scores.contains(&0.0) && scores.iter().any(|&s| s > 1.0), "{scores:?}");
}

#[test]
fn pickscore_matches_transformers() {
    let s = load_pickscore(&dir().join("pickscore"), None, &Device::Cpu).unwrap();
    check_image_text(s, "pickscore", "pickscore.scores");
}

#[test]
fn hpsv2_matches_open_clip() {
    let s = load_hpsv2(&dir().join("open-clip"), None, &Device::Cpu).unwrap();
    check_image_text(s, "hpsv2", "hpsv2.scores");
    // The weights file itself, with its config and tokenizer beside it.
    load_hpsv2(&dir().join("open-clip/open_clip_model.safetensors"), None, &Device::Cpu).unwrap();
}

#[test]
fn aesthetic_heads_match_the_reference() {
    let g = golden();
    let clip = dir().join("clip-vit");
    for (file, key) in [("mlp.safetensors", "aesthetic-mlp.scores"), ("linear.safetensors", "aesthetic-linear.scores")] {
        let mut s = AestheticScorer::load(&dir().join("aesthetic").join(file), &clip, &Device::Cpu).unwrap();
        check_pixels(&g, "aesthetic", |img| s.preprocess().pixel_values(std::slice::from_ref(img), &Device::Cpu).unwrap().squeeze(0).unwrap());
        let imgs: Vec<RgbU8> = g.images.iter().map(|n| image_u8(n)).collect();
        let d = max_diff(&s.image_embeds(&imgs).unwrap(), &g.t["aesthetic.image_embeds"]);
        assert!(d < 1e-4, "aesthetic embeds: {d}");
        let scores: Vec<f32> = g.images.iter().map(|n| s.score(&image_tensor(n), &["ignored".to_string()]).unwrap()[0]).collect();
        let d = vec_diff(&scores, &g.t[key]);
        assert!(d < 1e-4, "{key} {scores:?}: max diff {d}");
        println!("{key}: ours {scores:?}, max |diff| {d:e}");
    }
}

/// The aesthetic predictor's OpenAI-CLIP transform and the transformers
/// processor crop `tall.png` (30x52 -> 32x55, margin 23) one row apart.
#[test]
fn torchvision_and_transformers_crops_differ_where_they_should() {
    let g = golden();
    let a = &g.t["aesthetic.pixel_values.tall.png"];
    let c = &g.t["clip-vit.pixel_values.tall.png"];
    assert!(max_diff(a, c) > 0.1);
    assert_eq!(max_diff(&g.t["aesthetic.pixel_values.wide.png"], &g.t["clip-vit.pixel_values.wide.png"]), 0.0);
}

/// Scoring in process and scoring the PNG that `save_png` writes agree
/// exactly, for arbitrary floats (quantization is the same rounding).
#[test]
fn in_process_and_saved_png_scores_agree() {
    let mut s = load_pickscore(&dir().join("pickscore"), None, &Device::Cpu).unwrap();
    let x = (Tensor::randn(0f32, 0.7, (2, 3, 20, 27), &Device::Cpu).unwrap()).clamp(-1.2f32, 1.2f32).unwrap();
    let prompts = vec!["a red fox".to_string(), "a red fox".to_string()];
    let direct = s.score(&x, &prompts).unwrap();
    let tmp = psotune::scratch::ScratchDir::new("psotune-reward-png").unwrap();
    let mut via_png = Vec::new();
    for i in 0..2 {
        let p = tmp.join(format!("{i}.png"));
        let img = ((x.get(i).unwrap() / 2.0).unwrap() + 0.5).unwrap().clamp(0f32, 1f32).unwrap();
        save_png(&img, &p).unwrap();
        let loaded = load_image(&p, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        via_png.push(s.score(&loaded, &prompts[..1]).unwrap()[0]);
    }
    assert_eq!(direct, via_png);
    // a batch scores as its images one by one (the text cache is reused)
    let one: Vec<f32> = (0..2).map(|i| s.score(&x.narrow(0, i, 1).unwrap(), &prompts[..1]).unwrap()[0]).collect();
    assert!(direct.iter().zip(&one).all(|(a, b)| (a - b).abs() < 1e-5), "{direct:?} vs {one:?}");
}

#[test]
fn the_loader_builds_every_kind() {
    let d = dir();
    let x = image_tensor("square.png");
    let p = vec!["a photo of a dog".to_string()];
    for (kind, path, aux) in [
        (NativeReward::ClipScore, d.join("clip-vit"), None),
        (NativeReward::PickScore, d.join("pickscore"), Some(d.join("pickscore"))),
        (NativeReward::HpsV2, d.join("open-clip"), None),
        (NativeReward::Aesthetic, d.join("aesthetic/mlp.safetensors"), Some(d.join("clip-vit"))),
    ] {
        let mut r = load_native_reward(kind, &path, aux.as_deref(), &Device::Cpu).unwrap();
        assert_eq!(r.name(), kind.name());
        let s = r.score(&x, &p).unwrap();
        assert_eq!(s.len(), 1);
        assert!(r.score(&x, &[]).unwrap_err().to_string().contains("1 images but 0 prompts"));
    }
}

/// Copy a fixture folder to a scratch place to break it.
fn scratch_copy(name: &str, tag: &str) -> psotune::scratch::ScratchDir {
    let dst = psotune::scratch::ScratchDir::new(&format!("psotune-reward-{tag}")).unwrap();
    for e in std::fs::read_dir(dir().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn broken_inputs_are_typed_errors_naming_what_is_wrong() {
    let dev = Device::Cpu;
    // no tokenizer anywhere
    let d = scratch_copy("clip-vit", "notok");
    std::fs::remove_file(d.join("vocab.json")).unwrap();
    let msg = load_clip_score(&d, None, &dev).err().unwrap().to_string();
    assert!(msg.contains("vocab.json") && msg.contains("tokenizer"), "{msg}");

    // a preprocessor that does not give the vision tower's size
    let d = scratch_copy("clip-vit", "size");
    std::fs::write(d.join("preprocessor_config.json"), r#"{"size": {"shortest_edge": 40}, "crop_size": {"height": 36, "width": 36}}"#).unwrap();
    let msg = load_clip_score(&d, None, &dev).err().unwrap().to_string();
    assert!(msg.contains("preprocessor_config.json") && msg.contains("36x36") && msg.contains("32x32"), "{msg}");

    // a weight file missing a key
    let d = scratch_copy("clip-vit", "weights");
    let mut t = read_safetensors(&d.join("model.safetensors")).unwrap();
    t.remove("vision_model.post_layernorm.weight");
    candle_core::safetensors::save(&t, d.join("model.safetensors")).unwrap();
    let msg = load_clip_score(&d, None, &dev).err().unwrap().to_string();
    assert!(msg.contains("vision_model.post_layernorm.weight") && msg.contains("missing"), "{msg}");

    // open_clip with SD2-style "!" padding
    let d = scratch_copy("open-clip", "bang");
    let cfg = std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap().replace("\"pad_token\": \"<|endoftext|>\"", "\"pad_token\": \"!\"");
    std::fs::write(d.join("tokenizer_config.json"), cfg).unwrap();
    let _ = std::fs::remove_file(d.join("special_tokens_map.json"));
    let msg = load_hpsv2(&d, None, &dev).err().unwrap().to_string();
    assert!(msg.contains("pad token") && msg.contains("tokenizer_config.json"), "{msg}");

    // an aesthetic head for another embedding width
    let scratch = psotune::scratch::ScratchDir::new("psotune-reward-head").unwrap();
    let bad = scratch.join("head.safetensors");
    let mut h = HashMap::new();
    h.insert("layers.0.weight".to_string(), Tensor::zeros((8, 12), DType::F32, &dev).unwrap());
    candle_core::safetensors::save(&h, &bad).unwrap();
    let msg = AestheticScorer::load(&bad, &dir().join("clip-vit"), &dev).err().unwrap().to_string();
    assert!(msg.contains("layers.0.weight takes 12 features, expected 16"), "{msg}");
}

/// With real converted checkpoints (tools/README.md, "Converting the
/// official reward checkpoints") under `$PSOTUNE_REWARD_MODELS` as
/// `clip-vit-l-14/`, `pickscore/`, `hpsv2/`, `aesthetic-v2.safetensors`:
/// every scorer loads strictly and gives finite scores. Run with
/// `cargo test -p psotune --test reward_parity -- --ignored`.
#[test]
#[ignore = "needs the real reward checkpoints"]
fn real_checkpoints_load_and_score() {
    let Some(root) = std::env::var_os("PSOTUNE_REWARD_MODELS").map(PathBuf::from) else {
        panic!("set PSOTUNE_REWARD_MODELS to the folder of converted reward checkpoints");
    };
    let x = image_tensor("wide.png");
    let p = vec!["a colourful gradient".to_string()];
    let clip = root.join("clip-vit-l-14");
    for (kind, path, aux) in [
        (NativeReward::ClipScore, clip.clone(), None),
        (NativeReward::PickScore, root.join("pickscore"), None),
        (NativeReward::HpsV2, root.join("hpsv2"), None),
        (NativeReward::Aesthetic, root.join("aesthetic-v2.safetensors"), Some(clip.clone())),
    ] {
        if !path.exists() {
            println!("{kind}: {} not there, skipped", path.display());
            continue;
        }
        let mut r = load_native_reward(kind, &path, aux.as_deref(), &Device::Cpu).unwrap();
        let s = r.score(&x, &p).unwrap();
        println!("{kind}: {s:?}");
        assert!(s[0].is_finite());
    }
}
