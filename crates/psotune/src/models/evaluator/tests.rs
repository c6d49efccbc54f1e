//! Evaluator tests: the loss against hand-computed numbers and finite
//! differences, the model's shapes, strict loading and input gradient, the
//! split and augmentation, and training on a tiny synthetic folder (loss
//! falls, outputs load back, an interrupted run resumes bit-exactly).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::data::{stream, ImageSet};
use super::loss::cross_entropy_reference;
use super::train::train_until;
use super::*;
use crate::data::ImageFolder;
use crate::nn::Weights;
use crate::ops::gradcheck::{check, det_tensor, project};
use crate::scratch::ScratchDir;

fn tiny_config() -> EvaluatorConfig {
    EvaluatorConfig {
        image_size: 8,
        in_channels: 3,
        block_channels: vec![4, 8],
        layers_per_block: 1,
        norm_num_groups: 2,
        styles: vec!["a".into(), "b".into(), "c".into()],
        categories: vec!["x".into(), "y".into()],
    }
}

fn temp_dir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-evaluator-{name}")).unwrap()
}

/// Hand-computed: logits (0, ln 3) put probability 3/4 on class 1, so the
/// loss for target 1 is ln(4/3), for target 0 ln 4; the mean of both rows.
#[test]
fn cross_entropy_by_hand() {
    let logits = Tensor::new(&[[0.0f64, 3f64.ln()], [0.0, 3f64.ln()]], &Device::Cpu).unwrap();
    let got = cross_entropy(&logits, &[1, 0]).unwrap().to_scalar::<f64>().unwrap();
    let want = ((4.0f64 / 3.0).ln() + 4f64.ln()) / 2.0;
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    // Large logits do not overflow (the max is subtracted).
    let big = Tensor::new(&[[1000.0f32, 0.0, -1000.0]], &Device::Cpu).unwrap();
    assert!(cross_entropy(&big, &[0]).unwrap().to_scalar::<f32>().unwrap().abs() < 1e-6);
    assert!(cross_entropy(&big, &[3]).unwrap_err().to_string().contains("out of range"));
    assert!(cross_entropy(&big, &[0, 1]).unwrap_err().to_string().contains("2 targets"));
}

#[test]
fn cross_entropy_gradient_and_reference() {
    let logits = det_tensor(&[4, 5], 3);
    let targets = [0, 4, 2, 2];
    let rows: Vec<Vec<f64>> = logits.to_vec2::<f64>().unwrap();
    let got = cross_entropy(&logits, &targets).unwrap().to_scalar::<f64>().unwrap();
    assert!((got - cross_entropy_reference(&rows, &targets)).abs() < 1e-14);
    let worst = check(&[logits], |t| cross_entropy(&t[0], &targets)).unwrap();
    assert!(worst < 1e-6, "{worst}");
}

#[test]
fn forward_shapes_and_parameter_names() {
    let cfg = tiny_config();
    let names: Vec<String> = parameter_shapes(&cfg).unwrap().into_iter().map(|(n, _)| n).collect();
    for key in [
        "conv_in.weight",
        "down_blocks.0.resnets.0.norm1.weight",
        "down_blocks.0.resnets.0.conv2.bias",
        "down_blocks.1.resnets.0.conv_shortcut.weight",
        "norm_out.bias",
        "style_head.weight",
        "category_head.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "{key} not in {names:?}");
    }
    // Same channels and stride in level 0: no shortcut projection.
    assert!(!names.iter().any(|n| n.starts_with("down_blocks.0.resnets.0.conv_shortcut")));

    let w = Weights::from_tensors(init_weights(&cfg, 1).unwrap(), "init", DType::F32, &Device::Cpu);
    let model = Evaluator::new(w.var_builder(), &cfg).unwrap();
    w.finish().unwrap();
    let x = det_tensor(&[5, 3, 8, 8], 2).to_dtype(DType::F32).unwrap();
    let out = model.forward(&x).unwrap();
    assert_eq!(out.features.dims(), &[5, 8]);
    assert_eq!(out.style_logits.dims(), &[5, 3]);
    assert_eq!(out.category_logits.dims(), &[5, 2]);
    // Zero-initialised heads: uniform probabilities.
    let scores = model.style_scores(&x, "b").unwrap();
    assert!(scores.iter().all(|s| (s - 1.0 / 3.0).abs() < 1e-6), "{scores:?}");
    assert!(model.style_scores(&x, "zz").unwrap_err().to_string().contains("a, b, c"));
    let probs = model.category_probs(&x).unwrap();
    assert_eq!(probs.dims(), &[5, 2]);
    let sums = probs.sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
    // Equal logits: arg-max is class 0 for every row.
    assert_eq!(model.category_accuracy(&x, &[0, 0, 0, 1, 1]).unwrap(), 0.6);
    assert!(model.category_accuracy(&x, &[0]).unwrap_err().to_string().contains("1 targets"));
    let wrong = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(model.features(&wrong).unwrap_err().to_string().contains("[N, 3, 8, 8]"));
    // Same seed, same weights.
    let again = init_weights(&cfg, 1).unwrap();
    let a = again["conv_in.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = w.get("conv_in.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
}

/// The gradient reaching the input passes backward through every op of
/// the model (conv_in, strided and plain convs, group norm + SiLU, the
/// shortcut, the pool, both heads), checked against finite differences in f64.
#[test]
fn input_gradient_matches_finite_differences() {
    let cfg = EvaluatorConfig { image_size: 4, ..tiny_config() };
    let mut tensors = init_weights(&cfg, 5).unwrap();
    // Non-zero heads, so the loss depends on the features.
    for (name, seed) in [("style_head.weight", 7), ("category_head.weight", 8)] {
        let dims = tensors[name].dims().to_vec();
        tensors.insert(name.into(), det_tensor(&dims, seed).to_dtype(DType::F32).unwrap());
    }
    let w = Weights::from_tensors(tensors, "init", DType::F64, &Device::Cpu);
    let model = Evaluator::new(w.var_builder(), &cfg).unwrap();
    let x = det_tensor(&[2, 3, 4, 4], 9);
    let worst = check(&[x], |t| {
        let out = model.forward(&t[0])?;
        let loss = (cross_entropy(&out.style_logits, &[0, 2])? + cross_entropy(&out.category_logits, &[1, 0])?)?;
        loss + project(&out.features, 4)?
    })
    .unwrap();
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn strict_load_round_trip_and_config_errors() {
    let cfg = tiny_config();
    let dir = temp_dir("load");
    let tensors = init_weights(&cfg, 2).unwrap();
    crate::nn::weights::write_safetensors(&tensors, &dir.join(WEIGHTS_FILE)).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string(&cfg).unwrap()).unwrap();
    let model = Evaluator::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.config, cfg);
    assert_eq!(model.category_index("y"), Some(1));

    // A config that asks for another architecture names the keys.
    let other = EvaluatorConfig { block_channels: vec![4, 6], ..cfg.clone() };
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string(&other).unwrap()).unwrap();
    let e = Evaluator::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("down_blocks.1.resnets.0.conv1.weight"), "{e}");

    let bad = [
        (r#""block_channels":[4,8]"#, r#""block_channels":[4,7]"#, "multiple of norm_num_groups"),
        (r#""image_size":8"#, r#""image_size":9"#, "not divisible"),
        (r#""styles":["a","b","c"]"#, r#""styles":["a","a"]"#, "`a` twice"),
        (r#""image_size":8"#, r#""image_size":8,"extra":1"#, "unknown field"),
    ];
    let good = serde_json::to_string(&cfg).unwrap();
    for (from, to, want) in bad {
        assert!(good.contains(from), "{good}");
        std::fs::write(dir.join(CONFIG_FILE), good.replace(from, to)).unwrap();
        let e = Evaluator::load(&dir, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("config.json"), "{e}");
    }
}

#[test]
fn validation_split_is_by_concept_and_near_the_fraction() {
    let ids: Vec<String> = (0..20_000).map(|i| format!("{:x}", 0x1f300 + i)).collect();
    let n = ids.iter().filter(|c| is_validation_concept(c, 0.1)).count();
    assert!((1_800..2_200).contains(&n), "{n}");
    // Deterministic, and nested: a smaller fraction picks a subset.
    assert!(ids.iter().all(|c| is_validation_concept(c, 0.1) == is_validation_concept(c, 0.1)));
    assert!(ids.iter().filter(|c| is_validation_concept(c, 0.05)).all(|c| is_validation_concept(c, 0.1)));
}

/// A synthetic emoji folder: `concepts` concepts in 3 styles (background
/// colour) and 2 categories (a square or a cross), plus one holdout line.
fn synthetic_folder(dir: &Path, concepts: usize) {
    let colours = [("a", [230u8, 40, 40]), ("b", [40, 200, 40]), ("c", [40, 40, 230])];
    let mut lines = Vec::new();
    for k in 0..concepts + 1 {
        let (category, split) = match k {
            k if k == concepts => ("x", "holdout"),
            k if k % 2 == 0 => ("x", "train"),
            _ => ("y", "train"),
        };
        for (style, rgb) in colours {
            let mut img = image::RgbImage::from_pixel(8, 8, image::Rgb([255, 255, 255]));
            let off = (k % 3) as u32; // concepts differ by position
            for i in 0..4u32 {
                for j in 0..4u32 {
                    let on = if category == "x" { true } else { i == 1 || j == 1 };
                    if on {
                        img.put_pixel(1 + off + i, 1 + j, image::Rgb(rgb));
                    }
                }
            }
            let file = format!("{style}-{k}.png");
            img.save(dir.join(&file)).unwrap();
            lines.push(format!(
                r#"{{"file_name":"{file}","text":"t","style":"{style}","concept":"c{k}","subgroup":"{category}","split":"{split}"}}"#
            ));
        }
    }
    std::fs::write(dir.join("metadata.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn tiny_train_config() -> EvaluatorTrainConfig {
    EvaluatorTrainConfig {
        epochs: 8,
        batch_size: 4,
        lr: 2e-2,
        warmup_steps: 2,
        val_fraction: 0.25,
        max_shift: 1,
        seed: 3,
        checkpoint_every: 4,
        log_every: 100,
        image_size: 8,
        styles: vec!["a".into(), "b".into(), "c".into()],
        block_channels: vec![4, 8],
        norm_num_groups: 2,
        ..EvaluatorTrainConfig::default()
    }
}

#[test]
fn shifted_batches_fill_with_white() {
    let dir = temp_dir("shift");
    synthetic_folder(&dir, 2);
    let folder = ImageFolder::open(&dir).unwrap();
    let styles: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let items = super::data::labeled_items(&folder, &styles, &["x".into(), "y".into()]).unwrap();
    assert_eq!(items.len(), 6, "the holdout concept is left out");
    let set = ImageSet::load(&items, 8).unwrap();
    let plain = set.batch(&[0], 0, &mut stream(0, 0, 0)).unwrap();
    let want = crate::pipeline::image::load_image(&items[0].item.path, &Device::Cpu).unwrap();
    assert_eq!(plain.squeeze(0).unwrap().to_vec3::<f32>().unwrap(), want.to_vec3::<f32>().unwrap());
    // Shifted copies stay in range, are reproducible from (seed, step), and
    // some differ from the original.
    let plain_v = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut moved = 0;
    for step in 0..8 {
        let s = set.batch(&[0], 2, &mut stream(1, 2, step)).unwrap();
        let v = s.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
        if v != plain_v {
            moved += 1;
        }
        // The same (seed, step) gives the same batch.
        let again = set.batch(&[0], 2, &mut stream(1, 2, step)).unwrap();
        assert_eq!(again.flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
    }
    assert!(moved > 0);
}

#[test]
fn trains_on_a_tiny_folder_and_resumes_bit_exactly() {
    let data = temp_dir("train-data");
    synthetic_folder(&data, 12);
    let cfg = tiny_train_config();
    let (run_a, out_a) = (temp_dir("run-a"), temp_dir("out-a"));
    let report = train_evaluator(&data, &run_a, &out_a, &cfg).unwrap();
    assert!(report.val_images > 0 && report.train_images > 0, "{report:?}");
    assert_eq!(report.train_images + report.val_images, 36, "the holdout concept is left out");
    assert_eq!(report.history.len(), 8);
    let first = report.history[0].train_loss;
    let last = report.history[7].train_loss;
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    // Above chance (1/3) on unseen concepts; the 4-channel model is tiny.
    assert!(report.val_style_accuracy > 0.5, "{report:?}");

    // The outputs load back, strictly, and match the report.
    let model = Evaluator::load(&out_a, &Device::Cpu).unwrap();
    assert_eq!(model.config.categories, vec!["x", "y"]);
    let saved: EvaluatorReport = crate::error::read_json(&out_a.join(REPORT_FILE)).unwrap();
    // (serde_json's default float parsing may differ in the last bit.)
    assert_eq!((saved.steps, saved.val_style_accuracy, saved.val_category_accuracy), (48, report.val_style_accuracy, report.val_category_accuracy));
    assert!((saved.history[7].train_loss - last).abs() < 1e-12);

    // Interrupted after 13 steps (mid-epoch), then continued: the same weights, byte for byte.
    let (run_b, out_b) = (temp_dir("run-b"), temp_dir("out-b"));
    assert!(train_until(&data, &run_b, &out_b, &cfg, Some(13)).unwrap().is_none());
    assert!(!out_b.join(WEIGHTS_FILE).exists());
    let resumed = train_evaluator(&data, &run_b, &out_b, &cfg).unwrap();
    let a = std::fs::read(out_a.join(WEIGHTS_FILE)).unwrap();
    let b = std::fs::read(out_b.join(WEIGHTS_FILE)).unwrap();
    assert!(a == b, "resumed weights differ");
    assert_eq!(resumed.val_category_accuracy, report.val_category_accuracy);

    // A changed config is refused in the same run directory.
    let changed = EvaluatorTrainConfig { lr: 5e-3, ..cfg };
    let e = train_evaluator(&data, &run_b, &out_b, &changed).unwrap_err().to_string();
    assert!(e.contains("different config"), "{e}");
}

#[test]
fn bad_data_is_reported_with_the_line() {
    let data = temp_dir("bad-data");
    synthetic_folder(&data, 4);
    let text = std::fs::read_to_string(data.join("metadata.jsonl")).unwrap();
    let cfg = tiny_train_config();
    let run = temp_dir("bad-run");
    std::fs::write(data.join("metadata.jsonl"), text.replacen(r#""style":"b""#, r#""style":"q""#, 1)).unwrap();
    let e = train_evaluator(&data, &run, &run, &cfg).unwrap_err().to_string();
    assert!(e.contains("metadata.jsonl:2") && e.contains("`q`"), "{e}");
    std::fs::write(data.join("metadata.jsonl"), text.replacen(r#","subgroup":"x""#, "", 1)).unwrap();
    let e = train_evaluator(&data, &run, &run, &cfg).unwrap_err().to_string();
    assert!(e.contains("metadata.jsonl:1") && e.contains("`subgroup`"), "{e}");
}

#[test]
fn validation_concepts_are_pinned() {
    // tools/emoji-data writes the same split as the `fold` field of
    // metadata.jsonl and pins the same ids; both sides must agree.
    for c in ["0023-20e3", "00a9", "1f0cf", "1f193", "1f1e6-1f1ee"] {
        assert!(is_validation_concept(c, 0.1), "{c}");
    }
    for c in ["002a-20e3", "002d", "0030-20e3"] {
        assert!(!is_validation_concept(c, 0.1), "{c}");
    }
}
