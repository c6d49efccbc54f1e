//! diffusers / PEFT LoRA files: `unet.<module path>.lora_A.weight` [r, in]
//! and `.lora_B.weight` [out, r], with the `LoraConfig` (`r`, `lora_alpha`,
//! `target_modules`, per-module `rank_pattern` / `alpha_pattern`) as JSON
//! under the safetensors metadata key `lora_adapter_metadata`, each field
//! prefixed `unet.` (diffusers 0.42 `LoraBaseMixin._save_lora_weights` and
//! `PeftAdapterMixin.load_lora_adapter`, which builds `LoraConfig(**metadata)`).
//! Without metadata diffusers assumes alpha = rank (scale 1).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use regex::Regex;
use serde_json::{json, Value};

use super::st::write_with_metadata;
use crate::error::{Error, Result};
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

/// Tensors and header metadata of a diffusers LoRA file.
pub fn to_peft_tensors(weights: &[LoraWeights]) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let mut tensors = HashMap::new();
    for w in weights {
        tensors.insert(format!("unet.{}.lora_A.weight", w.path), w.lora_a.clone());
        tensors.insert(format!("unet.{}.lora_B.weight", w.path), w.lora_b.clone());
    }
    let r = most_common(weights.iter().map(|w| w.rank() as f64));
    let alpha = most_common(weights.iter().map(|w| w.alpha));
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for w in weights {
        if w.rank() as f64 != r {
            rank_pattern.insert(w.path.clone(), json!(w.rank()));
        }
        if w.alpha != alpha {
            alpha_pattern.insert(w.path.clone(), number(w.alpha));
        }
    }
    let targets: Vec<&str> = weights.iter().map(|w| w.path.as_str()).collect();
    let config = json!({
        "unet.r": number(r),
        "unet.lora_alpha": number(alpha),
        "unet.target_modules": targets,
        "unet.rank_pattern": rank_pattern,
        "unet.alpha_pattern": alpha_pattern,
        "unet.init_lora_weights": true,
        "unet.use_dora": false,
        "unet.lora_bias": false,
    });
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(METADATA_KEY.to_string(), serde_json::to_string_pretty(&config).map_err(|e| Error::invalid(e.to_string()))?);
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

/// Adapters of a diffusers / PEFT file. Keys may carry `unet.` (diffusers)
/// or `base_model.model.` (PEFT's `save_pretrained`); text-encoder
/// adapters are rejected by name rather than silently dropped.
pub fn read_peft(path: &Path, tensors: &HashMap<String, Tensor>, metadata: Option<&HashMap<String, String>>) -> Result<Vec<LoraWeights>> {
    let bad = |msg: String| super::lora_error(path, msg);
    let config: Option<Value> = match metadata.and_then(|m| m.get(METADATA_KEY)) {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| bad(format!("{METADATA_KEY} is not JSON: {e}")))?),
        None => None,
    };
    let field = |name: &str| config.as_ref().and_then(|c| c.get(format!("unet.{name}")).or_else(|| c.get(name)));
    let default_alpha = field("lora_alpha").and_then(Value::as_f64);

    let mut a_keys: BTreeMap<String, (&Tensor, Option<&Tensor>)> = BTreeMap::new();
    let mut alphas: HashMap<String, f64> = HashMap::new();
    let mut foreign = Vec::new();
    for (k, t) in tensors {
        let key = k.strip_prefix("unet.").or_else(|| k.strip_prefix("base_model.model.")).unwrap_or(k);
        if k.starts_with("text_encoder") {
            foreign.push(k.clone());
        } else if let Some(m) = key.strip_suffix(".lora_A.weight") {
            a_keys.entry(m.to_string()).or_insert((t, None)).0 = t;
        } else if key.ends_with(".lora_B.weight") {
            // paired below
        } else if let Some(m) = key.strip_suffix(".alpha") {
            // diffusers' older `network_alphas` spelling
            alphas.insert(m.to_string(), t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?.first().copied().unwrap_or(0.0));
        } else {
            foreign.push(k.clone());
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(bad(format!("keys that are not UNet LoRA weights (text-encoder LoRA is not supported): {}", foreign.join(", "))));
    }
    let mut out = Vec::with_capacity(a_keys.len());
    for (m, (a, _)) in a_keys {
        let b = ["unet.", "base_model.model.", ""]
            .iter()
            .find_map(|p| tensors.get(&format!("{p}{m}.lora_B.weight")))
            .ok_or_else(|| bad(format!("{m}.lora_A.weight has no lora_B")))?;
        let rank = a.dim(0)?;
        let alpha = alphas
            .get(&m)
            .copied()
            .or_else(|| pattern_value(field("alpha_pattern"), &m))
            .or(default_alpha)
            .unwrap_or(rank as f64);
        out.push(LoraWeights { path: m, lora_a: a.clone(), lora_b: b.clone(), alpha });
    }
    let n_b = tensors.keys().filter(|k| k.ends_with(".lora_B.weight")).count();
    if n_b != out.len() {
        return Err(bad(format!("{} lora_B tensors for {} lora_A tensors", n_b, out.len())));
    }
    Ok(out)
}
