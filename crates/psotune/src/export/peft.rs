//! diffusers / PEFT LoRA files: `unet.<module path>.lora_A.weight` [r, in]
//! and `.lora_B.weight` [out, r], with the `LoraConfig` (`r`, `lora_alpha`,
//! `target_modules`, per-module `rank_pattern` / `alpha_pattern`) as JSON
//! under the safetensors metadata key `lora_adapter_metadata`, each field
//! prefixed `unet.` (diffusers 0.42 `LoraBaseMixin._save_lora_weights` and
//! `PeftAdapterMixin.load_lora_adapter`, which builds `LoraConfig(**metadata)`).
//! Without metadata diffusers assumes alpha = rank (scale 1). Text-encoder
//! adapters sit beside the UNet's under `text_encoder.` / `text_encoder_2.`
//! with their own `LoraConfig` fields (`text_encoder.r`, ...).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use regex::Regex;
use serde_json::{json, Value};

use super::st::write_with_metadata;
use crate::error::{Error, Result};
use super::components::TEXT_ENCODERS;
use crate::models::clip::canonical_path;
use crate::nn::LoraWeights;

const METADATA_KEY: &str = "lora_adapter_metadata";

/// The most frequent value, ties broken by the smaller.
fn most_common(values: impl Iterator<Item = f64>) -> f64 {
    let mut counts: BTreeMap<u64, (usize, f64)> = BTreeMap::new();
    for v in values {
        counts.entry(v.to_bits()).or_insert((0, v)).0 += 1;
    }
    counts.values().fold((0usize, f64::INFINITY), |(n, best), &(c, v)| if c > n || (c == n && v < best) { (c, v) } else { (n, best) }).1
}

fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The name PEFT's `target_modules` / patterns use for a module: the path
/// inside its component, without the `text_model.` level that transformers
/// 5 drops for `CLIPTextModel` (PEFT matches names by suffix, so the short
/// form fits both transformers 4 and 5 module trees).
fn target_name(component: &str, path: &str) -> String {
    match component {
        "unet" => path.to_string(),
        _ => path.strip_prefix("text_model.").unwrap_or(path).to_string(),
    }
}

/// One component's `LoraConfig` fields, prefixed `<component>.`.
fn component_config(component: &str, weights: &[LoraWeights], config: &mut serde_json::Map<String, Value>) {
    let r = most_common(weights.iter().map(|w| w.rank() as f64));
    let alpha = most_common(weights.iter().map(|w| w.alpha));
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for w in weights {
        if w.rank() as f64 != r {
            rank_pattern.insert(target_name(component, &w.path), json!(w.rank()));
        }
        if w.alpha != alpha {
            alpha_pattern.insert(target_name(component, &w.path), number(w.alpha));
        }
    }
    let targets: Vec<String> = weights.iter().map(|w| target_name(component, &w.path)).collect();
    for (k, v) in [
        ("r", number(r)),
        ("lora_alpha", number(alpha)),
        ("target_modules", json!(targets)),
        ("rank_pattern", Value::Object(rank_pattern)),
        ("alpha_pattern", Value::Object(alpha_pattern)),
        ("init_lora_weights", json!(true)),
        ("use_dora", json!(false)),
        ("lora_bias", json!(false)),
    ] {
        config.insert(format!("{component}.{k}"), v);
    }
}

/// Tensors and header metadata of a diffusers LoRA file: UNet adapters as
/// `unet.<path>`, text-encoder adapters as `text_encoder[_2].<path>` (the
/// transformers 4 module path, which transformers 5 loads too), and one
/// `LoraConfig` per component in the metadata, as `save_lora_weights`
/// writes them.
pub fn to_peft_tensors(weights: &[LoraWeights]) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let (unet, te) = super::components::split_components(weights);
    let mut tensors = HashMap::new();
    let mut config = serde_json::Map::new();
    let parts = [("unet", &unet), (TEXT_ENCODERS[0], &te[0]), (TEXT_ENCODERS[1], &te[1])];
    for (component, ws) in parts {
        if ws.is_empty() {
            continue;
        }
        for w in ws.iter() {
            tensors.insert(format!("{component}.{}.lora_A.weight", w.path), w.lora_a.clone());
            tensors.insert(format!("{component}.{}.lora_B.weight", w.path), w.lora_b.clone());
        }
        component_config(component, ws, &mut config);
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(METADATA_KEY.to_string(), serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| Error::invalid(e.to_string()))?);
    Ok((tensors, meta))
}

/// Write `pytorch_lora_weights.safetensors` for `pipe.load_lora_weights`.
pub fn save_peft(path: &Path, weights: &[LoraWeights]) -> Result<()> {
    let (tensors, meta) = to_peft_tensors(weights)?;
    write_with_metadata(path, &tensors, Some(meta))
}

/// PEFT's `get_pattern_key`: a pattern matches a module path ending in it.
fn pattern_value(patterns: Option<&Value>, path: &str) -> Option<f64> {
    let map = patterns?.as_object()?;
    for (pat, v) in map {
        if let Ok(re) = Regex::new(&format!(r"^(.*\.)?(?:{pat})$")) {
            if re.is_match(path) {
                return v.as_f64();
            }
        }
    }
    None
}

/// A key's component and module path: `unet.` / `base_model.model.` /
/// bare keys are the UNet's; `text_encoder[_2].` keys a text encoder's,
/// their path mapped to the transformers 4 form ([`canonical_path`]).
fn split_key(key: &str) -> (&'static str, String) {
    for c in [TEXT_ENCODERS[1], TEXT_ENCODERS[0]] {
        if let Some(rest) = key.strip_prefix(c).and_then(|r| r.strip_prefix('.')) {
            return (c, canonical_path(rest));
        }
    }
    let rest = key.strip_prefix("unet.").or_else(|| key.strip_prefix("base_model.model.")).unwrap_or(key);
    ("unet", rest.to_string())
}

/// Adapters of a diffusers / PEFT file. UNet keys may carry `unet.`
/// (diffusers) or `base_model.model.` (PEFT's `save_pretrained`);
/// text-encoder keys `text_encoder.` / `text_encoder_2.`, returned with
/// that prefix (see [`super::components`]). Alphas come from each
/// component's `LoraConfig` in the metadata (`lora_alpha`, `alpha_pattern`)
/// or diffusers' older `.alpha` tensors, else alpha = rank.
pub fn read_peft(path: &Path, tensors: &HashMap<String, Tensor>, metadata: Option<&HashMap<String, String>>) -> Result<Vec<LoraWeights>> {
    let bad = |msg: String| super::lora_error(path, msg);
    let config: Option<Value> = match metadata.and_then(|m| m.get(METADATA_KEY)) {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| bad(format!("{METADATA_KEY} is not JSON: {e}")))?),
        None => None,
    };
    // Un-prefixed fields are PEFT's own adapter_config (UNet only).
    let field = |component: &str, name: &str| {
        let c = config.as_ref()?;
        c.get(format!("{component}.{name}")).or_else(|| if component == "unet" { c.get(name) } else { None })
    };

    // (component, module path) -> lora_A, lora_B
    type Factors<'a> = (Option<&'a Tensor>, Option<&'a Tensor>);
    let mut parts: BTreeMap<(&'static str, String), Factors<'_>> = BTreeMap::new();
    let mut alphas: HashMap<(&'static str, String), f64> = HashMap::new();
    let mut foreign = Vec::new();
    for (k, t) in tensors {
        if let Some(m) = k.strip_suffix(".lora_A.weight") {
            parts.entry(split_key(m)).or_default().0 = Some(t);
        } else if let Some(m) = k.strip_suffix(".lora_B.weight") {
            parts.entry(split_key(m)).or_default().1 = Some(t);
        } else if let Some(m) = k.strip_suffix(".alpha") {
            // diffusers' older `network_alphas` spelling
            alphas.insert(split_key(m), t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?.first().copied().unwrap_or(0.0));
        } else {
            foreign.push(k.clone());
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(bad(format!("keys that are not LoRA weights: {}", foreign.join(", "))));
    }
    let mut out = Vec::with_capacity(parts.len());
    for ((component, m), (a, b)) in parts {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad(format!("{component} module {m} has only one of lora_A / lora_B")));
        };
        if a.rank() < 2 || b.rank() < 2 {
            return Err(bad(format!("{component} module {m}: lora_A {:?} / lora_B {:?} are not matrices", a.dims(), b.dims())));
        }
        let rank = a.dim(0)?;
        let alpha = alphas
            .get(&(component, m.clone()))
            .copied()
            .or_else(|| pattern_value(field(component, "alpha_pattern"), &m))
            .or_else(|| field(component, "lora_alpha").and_then(Value::as_f64))
            .unwrap_or(rank as f64);
        let path = if component == "unet" { m } else { format!("{component}.{m}") };
        out.push(LoraWeights { path, lora_a: a.clone(), lora_b: b.clone(), alpha });
    }
    Ok(out)
}
