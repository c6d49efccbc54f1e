//! open_clip's model config (`CLIPVisionCfg` / `CLIPTextCfg` of
//! open_clip/model.py, version 3.3.0): `{"embed_dim", "quick_gelu",
//! "vision_cfg", "text_cfg"}` as in open_clip's `model_configs/*.json`, or
//! the `open_clip_config.json` that open_clip writes next to hub weights,
//! `{"model_cfg": {...}, "preprocess_cfg": {...}}`.
//!
//! Only the plain ViT + text transformer is built (what HPSv2's ViT-H-14
//! uses). Every option that would change the network away from it (layer
//! scale, attentional pooling, timm or HF towers, custom attention blocks,
//! other pooling rules) is refused by name rather than silently ignored;
//! options that only matter in training (dropout, output flags) are
//! accepted and ignored, and an unknown key is an error so that a newer
//! format cannot slip through.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{read_json, Error, Result};

/// `vision_cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipVisionConfig {
    pub image_size: usize,
    pub layers: usize,
    pub width: usize,
    pub head_width: usize,
    pub mlp_ratio: f64,
    pub patch_size: usize,
}

/// `text_cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipTextConfig {
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    pub mlp_ratio: f64,
}

/// `preprocess_cfg` (open_clip/transform.py `PreprocessCfg`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipPreprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// `"bicubic"` (the default) or `"bilinear"`.
    pub interpolation: String,
    /// `"shortest"` (resize the short side, centre-crop; the default) or
    /// `"squash"` (resize to the square, no crop).
    pub resize_mode: String,
}

/// OpenAI CLIP's normalisation, open_clip's default (`OPENAI_DATASET_MEAN/STD`),
/// written as published (f32 rounds the last digits).
pub const OPENAI_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

impl Default for OpenClipPreprocess {
    fn default() -> Self {
        Self { mean: OPENAI_MEAN, std: OPENAI_STD, interpolation: "bicubic".into(), resize_mode: "shortest".into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipConfig {
    pub embed_dim: usize,
    /// `x * sigmoid(1.702 x)` instead of erf GELU (OpenAI-trained weights).
    pub quick_gelu: bool,
    pub vision: OpenClipVisionConfig,
    pub text: OpenClipTextConfig,
    pub preprocess: OpenClipPreprocess,
}

impl OpenClipVisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn heads(&self) -> usize {
        self.width / self.head_width
    }
    /// `int(width * mlp_ratio)`, as open_clip sizes the MLP.
    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

impl OpenClipTextConfig {
    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

/// What a key of a section may be: read, accepted only at its default, or ignored.
enum Rule {
    Read,
    /// The option changes the network; only this value (open_clip's
    /// default) is supported.
    Default(Value),
    /// Training-only or informational.
    Ignore,
}

fn rules(section: &str) -> Vec<(&'static str, Rule)> {
    use Rule::*;
    let off = || Default(Value::Bool(false));
    let null = || Default(Value::Null);
    let common = vec![
        ("layers", Read),
        ("width", Read),
        ("mlp_ratio", Read),
        ("ls_init_value", null()),
        ("act_kwargs", null()),
        ("norm_kwargs", null()),
        ("block_type", null()),
        ("qk_norm", off()),
        ("scaled_cosine_attn", off()),
        ("scale_heads", off()),
        ("scale_attn_inner", off()),
        ("scale_attn", off()),
        ("scale_fc", off()),
        ("final_ln_after_pool", off()),
        ("output_tokens", Ignore),
    ];
    let mut v = common;
    match section {
        "vision_cfg" => v.extend([
            ("image_size", Read),
            ("head_width", Read),
            ("patch_size", Read),
            ("patch_dropout", Ignore),
            ("attentional_pool", off()),
            ("attn_pooler_queries", Ignore),
            ("attn_pooler_heads", Ignore),
            ("no_ln_pre", off()),
            ("pos_embed_type", Default(Value::String("learnable".into()))),
            ("pool_type", Default(Value::String("tok".into()))),
            ("timm_model_name", null()),
            ("timm_model_pretrained", Ignore),
            ("timm_pool", Ignore),
            ("timm_proj", Ignore),
            ("timm_proj_bias", Ignore),
            ("timm_drop", Ignore),
            ("timm_drop_path", Ignore),
        ]),
        _ => v.extend([
            ("context_length", Read),
            ("vocab_size", Read),
            ("heads", Read),
            ("hf_tokenizer_name", Ignore),
            ("tokenizer_mode", Ignore),
            ("tokenizer_kwargs", Ignore),
            ("embed_cls", off()),
            ("pad_id", Ignore),
            ("eos_id", Ignore),
            ("no_causal_mask", off()),
            ("pool_type", Default(Value::String("argmax".into()))),
            ("proj_bias", off()),
            ("proj_type", Default(Value::String("linear".into()))),
            ("hf_model_name", null()),
            ("hf_model_pretrained", Ignore),
            ("hf_proj_type", Ignore),
            ("hf_pooler_type", Ignore),
        ]),
    }
    v
}

/// Check a section's keys against its rules; return the readable ones.
fn check_section(path: &Path, section: &str, obj: &Map<String, Value>) -> Result<Map<String, Value>> {
    let rules = rules(section);
    let mut out = Map::new();
    for (k, v) in obj {
        let Some((_, rule)) = rules.iter().find(|(name, _)| name == k) else {
            return Err(Error::config(path, format!("{section}.{k} is not an open_clip option psotune knows")));
        };
        match rule {
            Rule::Read => {
                out.insert(k.clone(), v.clone());
            }
            Rule::Default(d) if v == d => {}
            Rule::Default(d) => {
                return Err(Error::config(
                    path,
                    format!("{section}.{k} = {v} is not supported (only {d}, the plain ViT / text transformer that HPSv2 uses)"),
                ))
            }
            Rule::Ignore => {}
        }
    }
    Ok(out)
}

fn get_usize(path: &Path, section: &str, m: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match m.get(key) {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(x) if x > 0 => Ok(x as usize),
            _ => Err(Error::config(path, format!("{section}.{key} must be a positive integer, got {v}"))),
        },
    }
}

fn get_ratio(path: &Path, section: &str, m: &Map<String, Value>) -> Result<f64> {
    match m.get("mlp_ratio") {
        None => Ok(4.0),
        Some(v) => match v.as_f64() {
            Some(x) if x > 0.0 && x.is_finite() => Ok(x),
            _ => Err(Error::config(path, format!("{section}.mlp_ratio must be a positive number, got {v}"))),
        },
    }
}

/// `image_size` is an int or a square `[h, w]`.
fn get_image_size(path: &Path, m: &Map<String, Value>) -> Result<usize> {
    match m.get("image_size") {
        None => Ok(224),
        Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] && a[0].as_u64().is_some_and(|x| x > 0) => Ok(a[0].as_u64().unwrap_or(0) as usize),
        Some(v) => match v.as_u64() {
            Some(x) if x > 0 => Ok(x as usize),
            _ => Err(Error::config(path, format!("vision_cfg.image_size must be a positive integer (or a square [h, w]), got {v}"))),
        },
    }
}

fn three(path: &Path, key: &str, v: &Value) -> Result<[f32; 3]> {
    let bad = || Error::config(path, format!("preprocess_cfg.{key} must be one number or three, got {v}"));
    match v {
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(bad)? as f32;
            Ok([x; 3])
        }
        Value::Array(a) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(bad)? as f32;
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}

fn read_preprocess(path: &Path, v: &Value, image_size: usize) -> Result<OpenClipPreprocess> {
    let Some(obj) = v.as_object() else {
        return Err(Error::config(path, "preprocess_cfg must be an object"));
    };
    let mut p = OpenClipPreprocess::default();
    for (k, v) in obj {
        match k.as_str() {
            "mean" => p.mean = three(path, k, v)?,
            "std" => p.std = three(path, k, v)?,
            "interpolation" | "resize_mode" => {
                let s = v.as_str().ok_or_else(|| Error::config(path, format!("preprocess_cfg.{k} must be a string, got {v}")))?;
                let ok = if k == "interpolation" { ["bicubic", "bilinear"] } else { ["shortest", "squash"] };
                if !ok.contains(&s) {
                    return Err(Error::config(path, format!("preprocess_cfg.{k} = {s:?} is not supported (one of {ok:?})")));
                }
                if k == "interpolation" {
                    p.interpolation = s.to_string();
                } else {
                    p.resize_mode = s.to_string();
                }
            }
            "size" => {
                let ok = match v {
                    Value::Array(a) => a.len() == 2 && a.iter().all(|x| x.as_u64() == Some(image_size as u64)),
                    _ => v.as_u64() == Some(image_size as u64),
                };
                if !ok {
                    return Err(Error::config(path, format!("preprocess_cfg.size {v} differs from vision_cfg.image_size {image_size}")));
                }
            }
            "mode" if v.as_str() == Some("RGB") => {}
            "fill_color" => {} // used only by the "longest" mode, which is refused
            _ => return Err(Error::config(path, format!("preprocess_cfg.{k} = {v} is not supported"))),
        }
    }
    if p.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err(Error::config(path, "preprocess_cfg.std must be non-zero"));
    }
    Ok(p)
}

impl OpenClipConfig {
    /// Read an open_clip model config (bare or wrapped in `model_cfg`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw: Value = read_json(path)?;
        let (model, preprocess) = match raw.get("model_cfg") {
            Some(m) => (m.clone(), raw.get("preprocess_cfg").cloned()),
            None => (raw.clone(), None),
        };
        let Some(model) = model.as_object() else {
            return Err(Error::config(path, "the open_clip model config must be a JSON object"));
        };
        let mut embed_dim = None;
        let mut quick_gelu = false;
        let (mut vision, mut text) = (None, None);
        for (k, v) in model {
            match k.as_str() {
                "embed_dim" => embed_dim = Some(v),
                "quick_gelu" => quick_gelu = v.as_bool().ok_or_else(|| Error::config(path, format!("quick_gelu must be true or false, got {v}")))?,
                "vision_cfg" | "text_cfg" => {
                    let obj = v.as_object().ok_or_else(|| Error::config(path, format!("{k} must be an object")))?;
                    let checked = check_section(path, k, obj)?;
                    if k == "vision_cfg" {
                        vision = Some(checked);
                    } else {
                        text = Some(checked);
                    }
                }
                // Layout and dtype hints of open_clip's factory; the keys are
                // detected from the weights and we compute in f32.
                "custom_text" | "cast_dtype" | "init_logit_scale" => {}
                "init_logit_bias" if v.is_null() => {}
                _ => return Err(Error::config(path, format!("{k} is not supported (psotune builds open_clip's plain CLIP model only)"))),
            }
        }
        let embed_dim = match embed_dim.and_then(|v| v.as_u64()) {
            Some(d) if d > 0 => d as usize,
            _ => return Err(Error::config(path, "embed_dim must be a positive integer")),
        };
        let (Some(v), Some(t)) = (vision, text) else {
            return Err(Error::config(path, "the model config needs both vision_cfg and text_cfg"));
        };
        let vision = OpenClipVisionConfig {
            image_size: get_image_size(path, &v)?,
            layers: get_usize(path, "vision_cfg", &v, "layers", 12)?,
            width: get_usize(path, "vision_cfg", &v, "width", 768)?,
            head_width: get_usize(path, "vision_cfg", &v, "head_width", 64)?,
            mlp_ratio: get_ratio(path, "vision_cfg", &v)?,
            patch_size: get_usize(path, "vision_cfg", &v, "patch_size", 16)?,
        };
        let text = OpenClipTextConfig {
            context_length: get_usize(path, "text_cfg", &t, "context_length", 77)?,
            vocab_size: get_usize(path, "text_cfg", &t, "vocab_size", 49408)?,
            width: get_usize(path, "text_cfg", &t, "width", 512)?,
            heads: get_usize(path, "text_cfg", &t, "heads", 8)?,
            layers: get_usize(path, "text_cfg", &t, "layers", 12)?,
            mlp_ratio: get_ratio(path, "text_cfg", &t)?,
        };
        let bad = |msg: String| Error::config(path, msg);
        if !vision.width.is_multiple_of(vision.head_width) {
            return Err(bad(format!("vision_cfg.width {} is not a multiple of head_width {}", vision.width, vision.head_width)));
        }
        if !vision.image_size.is_multiple_of(vision.patch_size) {
            return Err(bad(format!("vision_cfg.image_size {} is not a multiple of patch_size {}", vision.image_size, vision.patch_size)));
        }
        if !text.width.is_multiple_of(text.heads) {
            return Err(bad(format!("text_cfg.width {} is not a multiple of heads {}", text.width, text.heads)));
        }
        if text.context_length < 2 {
            return Err(bad("text_cfg.context_length must hold at least bos and eos".into()));
        }
        if vision.mlp_width() == 0 || text.mlp_width() == 0 {
            return Err(bad("mlp_ratio gives an empty MLP".into()));
        }
        let preprocess = match preprocess {
            Some(p) => read_preprocess(path, &p, vision.image_size)?,
            None => OpenClipPreprocess::default(),
        };
        Ok(Self { embed_dim, quick_gelu, vision, text, preprocess })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> crate::scratch::ScratchFile {
        crate::scratch::ScratchFile::new(&format!("psotune-open-clip-config-{name}"), "open_clip_config.json", text).unwrap()
    }

    /// open_clip's own model_configs/ViT-H-14.json, the HPSv2 backbone.
    const VIT_H_14: &str = r#"{"embed_dim": 1024,
        "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}"#;

    #[test]
    fn reads_vit_h_14_bare_and_wrapped() {
        let c = OpenClipConfig::from_file(write("bare", VIT_H_14)).unwrap();
        assert_eq!((c.embed_dim, c.vision.heads(), c.vision.mlp_width(), c.vision.grid()), (1024, 16, 5120, 16));
        assert_eq!((c.text.mlp_width(), c.text.context_length), (4096, 77));
        assert!(!c.quick_gelu);
        assert_eq!(c.preprocess, OpenClipPreprocess::default());

        let wrapped = format!(r#"{{"model_cfg": {VIT_H_14}, "preprocess_cfg": {{"mean": 0.5, "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "size": 224}}}}"#);
        let c = OpenClipConfig::from_file(write("wrapped", &wrapped)).unwrap();
        assert_eq!((c.preprocess.mean, c.preprocess.interpolation.as_str()), ([0.5; 3], "bilinear"));
    }

    #[test]
    fn options_that_change_the_network_are_refused_by_name() {
        for (name, patch, needle) in [
            ("ls", r#""ls_init_value": 1e-5"#, "vision_cfg.ls_init_value"),
            ("pool", r#""pool_type": "avg""#, "vision_cfg.pool_type"),
            ("timm", r#""timm_model_name": "vit_base""#, "vision_cfg.timm_model_name"),
            ("new", r#""rope": true"#, "vision_cfg.rope"),
        ] {
            let text = VIT_H_14.replace(r#""patch_size": 14}"#, &format!(r#""patch_size": 14, {patch}}}"#));
            let msg = OpenClipConfig::from_file(write(name, &text)).unwrap_err().to_string();
            assert!(msg.contains(needle) && msg.contains("open_clip_config.json"), "{name}: {msg}");
        }
        let text = VIT_H_14.replace(r#""layers": 24}"#, r#""layers": 24, "hf_model_name": "roberta-base"}"#);
        assert!(OpenClipConfig::from_file(write("hf", &text)).unwrap_err().to_string().contains("text_cfg.hf_model_name"));
        let text = VIT_H_14.replace(r#""head_width": 80"#, r#""head_width": 96"#);
        assert!(OpenClipConfig::from_file(write("heads", &text)).unwrap_err().to_string().contains("head_width 96"));
        let wrapped = format!(r#"{{"model_cfg": {VIT_H_14}, "preprocess_cfg": {{"resize_mode": "longest"}}}}"#);
        assert!(OpenClipConfig::from_file(write("longest", &wrapped)).unwrap_err().to_string().contains("resize_mode"));
        // training-only options are fine
        let text = VIT_H_14.replace(r#""patch_size": 14}"#, r#""patch_size": 14, "patch_dropout": 0.5, "ls_init_value": null}"#);
        OpenClipConfig::from_file(write("dropout", &text)).unwrap();
    }
}
