//! Reading a diffusers model folder: `model_index.json` says which pipeline
//! (and so which family) it is and which components it has; each component
//! folder holds a `config.json` and safetensors weights, possibly as an
//! `.fp16` variant or sharded with an index file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{read_json, Error, Result};

/// The model families psotune runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x / 2.x (SD-Turbo, LCM-SD1.5): one CLIP text encoder.
    Sd,
    /// SDXL (SDXL-Turbo, DMD2, LCM-SDXL): two text encoders, `text_time` conditioning.
    Sdxl,
}

/// What `model_index.json` told us.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub root: PathBuf,
    pub class_name: String,
    pub family: Family,
    /// Component name -> [library, class] as diffusers writes them; `null`
    /// entries (e.g. an absent safety checker) are left out.
    pub components: BTreeMap<String, (String, String)>,
    /// Extra keys written by psotune under `_psotune` (sampling defaults of
    /// models we ship); ignored by diffusers because of the leading underscore.
    pub psotune: Option<serde_json::Value>,
}

impl ModelFolder {
    pub fn open(root: &Path) -> Result<Self> {
        let folder_err = |msg: String| Error::ModelFolder { path: root.to_path_buf(), msg };
        if !root.is_dir() {
            return Err(folder_err("not a directory (expected a diffusers model folder)".into()));
        }
        let index_path = root.join("model_index.json");
        if !index_path.is_file() {
            return Err(folder_err(
                "no model_index.json: not a diffusers pipeline folder (a single-file .safetensors/.ckpt checkpoint must be converted to the diffusers layout first)".into(),
            ));
        }
        let index: serde_json::Map<String, serde_json::Value> = read_json(&index_path)?;
        let bad = |msg: String| Error::config(&index_path, msg);
        let class_name = index
            .get("_class_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("missing \"_class_name\"".into()))?
            .to_string();
        let family = family_of(&class_name).ok_or_else(|| {
            bad(format!(
                "pipeline class {class_name:?} is not supported (expected a StableDiffusion* or StableDiffusionXL* text-to-image pipeline)"
            ))
        })?;
        let mut components = BTreeMap::new();
        for (k, v) in &index {
            if k.starts_with('_') {
                continue;
            }
            // Non-list entries are pipeline settings (force_zeros_for_empty_prompt,
            // requires_safety_checker); [null, null] is an absent component.
            match v.as_array().map(|a| a.as_slice()) {
                Some([serde_json::Value::String(lib), serde_json::Value::String(cls)]) => {
                    components.insert(k.clone(), (lib.clone(), cls.clone()));
                }
                Some([serde_json::Value::Null, serde_json::Value::Null]) | None => {}
                Some(_) => return Err(bad(format!("component {k:?} should be [library, class], got {v}"))),
            }
        }
        let folder = ModelFolder { root: root.to_path_buf(), class_name, family, components, psotune: index.get("_psotune").cloned() };
        let needed: &[&str] = match family {
            Family::Sd => &["unet", "vae", "text_encoder", "tokenizer", "scheduler"],
            Family::Sdxl => &["unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"],
        };
        for c in needed {
            if !folder.components.contains_key(*c) {
                return Err(bad(format!("a {:?} pipeline needs the component {c:?}, which is not listed", folder.family)));
            }
        }
        for c in needed {
            if !root.join(c).is_dir() {
                return Err(folder_err(format!("component folder {c}/ is missing")));
            }
        }
        Ok(folder)
    }

    pub fn component_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The safetensors file(s) of a component. `variant` ("fp16") is tried
    /// first when given, then the plain name; without it the plain name is
    /// tried first and the `fp16` variant is the fallback (many hub folders
    /// ship only that).
    pub fn weight_files(&self, component: &str, variant: Option<&str>) -> Result<Vec<PathBuf>> {
        resolve_weights(&self.component_dir(component), variant)
    }
}

fn family_of(class_name: &str) -> Option<Family> {
    if class_name.starts_with("StableDiffusionXL") {
        Some(Family::Sdxl)
    } else if class_name == "StableDiffusionPipeline" || class_name.starts_with("StableDiffusionImg2Img") || class_name == "LatentConsistencyModelPipeline" {
        Some(Family::Sd)
    } else {
        None
    }
}

/// Find `diffusion_pytorch_model[.variant].safetensors` or `model[.variant].safetensors`
/// (transformers components), or their sharded `.safetensors.index.json`.
pub fn resolve_weights(dir: &Path, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut variants: Vec<Option<&str>> = match variant {
        Some(v) => vec![Some(v), None],
        None => vec![None, Some("fp16")],
    };
    variants.dedup();
    for v in &variants {
        for stem in ["diffusion_pytorch_model", "model"] {
            let name = match v {
                Some(v) => format!("{stem}.{v}.safetensors"),
                None => format!("{stem}.safetensors"),
            };
            let single = dir.join(&name);
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{name}.index.json"));
            if index.is_file() {
                return shard_files(dir, &index);
            }
        }
    }
    let has_bin = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "bin" || x == "ckpt")))
        .unwrap_or(false);
    let msg = if has_bin {
        "only PyTorch pickle weights (.bin/.ckpt) found; psotune reads safetensors only (convert with safetensors' tooling)".to_string()
    } else {
        "no safetensors weights found (expected diffusion_pytorch_model.safetensors, model.safetensors or an .fp16 variant)".to_string()
    };
    Err(Error::ModelFolder { path: dir.to_path_buf(), msg })
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct ShardIndex {
        weight_map: BTreeMap<String, String>,
    }
    let idx: ShardIndex = read_json(index)?;
    let mut files: Vec<PathBuf> = idx.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        if !f.is_file() {
            return Err(Error::config(index, format!("shard {} listed in the index does not exist", f.display())));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    fn tmp(name: &str) -> ScratchDir {
        ScratchDir::new(&format!("psotune-folder-{name}")).unwrap()
    }

    #[test]
    fn missing_model_index_is_a_clear_error() {
        let d = tmp("noindex");
        let e = ModelFolder::open(&d).unwrap_err().to_string();
        assert!(e.contains("model_index.json"), "{e}");
        let e = ModelFolder::open(&d.join("nope")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn unsupported_pipeline_and_missing_component_are_named() {
        let d = tmp("badclass");
        std::fs::write(d.join("model_index.json"), r#"{"_class_name": "FluxPipeline"}"#).unwrap();
        let e = ModelFolder::open(&d).unwrap_err().to_string();
        assert!(e.contains("FluxPipeline"), "{e}");
        std::fs::write(
            d.join("model_index.json"),
            r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                "safety_checker": [null, null]}"#,
        )
        .unwrap();
        let e = ModelFolder::open(&d).unwrap_err().to_string();
        assert!(e.contains("\"vae\""), "{e}");
        std::fs::write(d.join("model_index.json"), "{ not json").unwrap();
        let e = ModelFolder::open(&d).unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn weight_resolution_prefers_plain_then_fp16() {
        let d = tmp("weights");
        let e = resolve_weights(&d, None).unwrap_err().to_string();
        assert!(e.contains("no safetensors"), "{e}");
        std::fs::write(d.join("diffusion_pytorch_model.fp16.safetensors"), b"").unwrap();
        assert!(resolve_weights(&d, None).unwrap()[0].ends_with("diffusion_pytorch_model.fp16.safetensors"));
        std::fs::write(d.join("diffusion_pytorch_model.safetensors"), b"").unwrap();
        assert!(resolve_weights(&d, None).unwrap()[0].ends_with("diffusion_pytorch_model.safetensors"));
        assert!(resolve_weights(&d, Some("fp16")).unwrap()[0].ends_with("diffusion_pytorch_model.fp16.safetensors"));
    }
}
