//! The text encoder's `Linear` layers by dotted module path, for LoRA.
//!
//! Paths are transformers 4's `named_modules()` names,
//! `text_model.encoder.layers.0.self_attn.q_proj`, for both classes: what
//! kohya (`lora_te_text_model_encoder_...`) and most diffusers/PEFT files
//! (`text_encoder.text_model.encoder...`) use. transformers 5 drops the
//! `text_model.` level of `CLIPTextModel` (`encoder.layers...`); the LoRA
//! readers accept that spelling and map it here.

use candle_core::Result;

use super::text_model::{ClipAttention, ClipEncoderLayer, ClipMlp, ClipTextModel};
use crate::nn::modules::{join, LayerMut, Modules};
use crate::nn::{LoraTargets, TargetPreset};

type Visitor<'a> = dyn FnMut(&str, LayerMut<'_>) -> Result<()> + 'a;

impl Modules for ClipTextModel {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        let layers = join(&join(&join(p, "text_model"), "encoder"), "layers");
        self.text_model.encoder.layers.visit_mut(&layers, f)?;
        self.text_projection.visit_mut(&join(p, "text_projection"), f)
    }
}

impl Modules for ClipEncoderLayer {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.self_attn.visit_mut(&join(p, "self_attn"), f)?;
        self.mlp.visit_mut(&join(p, "mlp"), f)
    }
}

impl Modules for ClipAttention {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.q_proj.visit_mut(&join(p, "q_proj"), f)?;
        self.k_proj.visit_mut(&join(p, "k_proj"), f)?;
        self.v_proj.visit_mut(&join(p, "v_proj"), f)?;
        self.out_proj.visit_mut(&join(p, "out_proj"), f)
    }
}

impl Modules for ClipMlp {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.fc1.visit_mut(&join(p, "fc1"), f)?;
        self.fc2.visit_mut(&join(p, "fc2"), f)
    }
}

const ATTN: &str = r"text_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)";
const MLP: &str = r"text_model\.encoder\.layers\.\d+\.mlp\.(fc1|fc2)";

/// Text-encoder LoRA targets from the same spec the UNet's take: the
/// presets mean the corresponding CLIP layers (`attn`: q/k/v/out_proj as
/// diffusers' DreamBooth-LoRA scripts train; `attn-ff`: plus `mlp.fc1` /
/// `mlp.fc2`; `all-linear` / `all`: the same, every Linear of the encoder
/// layers), anything else is module-path patterns as for the UNet.
pub fn text_encoder_targets(spec: &str) -> crate::Result<LoraTargets> {
    let pats: &[&str] = match TargetPreset::from_name(spec.trim()) {
        Some(TargetPreset::Attn) => &[ATTN],
        Some(_) => &[ATTN, MLP],
        None => return LoraTargets::parse(spec),
    };
    let mut t = LoraTargets::patterns(pats)?;
    t.spec = spec.trim().to_string();
    Ok(t)
}

/// The internal path of a text-encoder module as a file names it: adds the
/// `text_model.` level transformers 5 drops for `CLIPTextModel`.
pub fn canonical_path(path: &str) -> String {
    if path.starts_with("encoder.") {
        format!("text_model.{path}")
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_map_to_clip_layers() {
        let t = text_encoder_targets("attn").unwrap();
        assert!(t.matches("text_model.encoder.layers.3.self_attn.out_proj", false));
        assert!(!t.matches("text_model.encoder.layers.3.mlp.fc1", false));
        assert!(!t.matches("text_projection", false));
        let t = text_encoder_targets("attn-ff").unwrap();
        assert!(t.matches("text_model.encoder.layers.0.mlp.fc2", false) && t.matches("text_model.encoder.layers.0.self_attn.q_proj", false));
        let t = text_encoder_targets(r".*layers\.0\.self_attn\.q_proj").unwrap();
        assert!(t.matches("text_model.encoder.layers.0.self_attn.q_proj", false) && !t.matches("text_model.encoder.layers.1.self_attn.q_proj", false));
        assert_eq!(canonical_path("encoder.layers.0.mlp.fc1"), "text_model.encoder.layers.0.mlp.fc1");
        assert_eq!(canonical_path("text_model.encoder.layers.0.mlp.fc1"), "text_model.encoder.layers.0.mlp.fc1");
    }
}
