//! kohya-ss LoRA files, the format ComfyUI and A1111 load:
//! `lora_unet_<module name, dots as underscores>.lora_down.weight` (= lora_A),
//! `.lora_up.weight` (= lora_B) and a scalar `.alpha`.
//!
//! Module names follow sd-scripts, which trains SD 1.x / 2.x on a UNet with
//! diffusers' module names (`lora_unet_down_blocks_0_attentions_0_...`) and
//! SDXL on the original SGM/LDM UNet (`lora_unet_input_blocks_4_1_...`,
//! `middle_block`, `output_blocks`, resnets as `in_layers_2` / `emb_layers_1`
//! / `out_layers_3` / `skip_connection`). The LDM numbering is the one of
//! diffusers' `scripts/convert_diffusers_to_original_sdxl.py` and what
//! `_maybe_map_sgm_blocks_to_diffusers` (diffusers 0.42
//! `loaders/lora_conversion_utils.py`) undoes; ComfyUI (`comfy/lora.py`
//! `model_lora_keys_unet`) accepts both spellings for both families, A1111
//! (`extensions-builtin/Lora/networks.py`) maps diffusers names to LDM ones.
//! Reading accepts both spellings for any UNet. Text-encoder adapters are
//! `lora_te_` (SD) or `lora_te1_` / `lora_te2_` (SDXL) plus the
//! transformers 4 module name.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::st::write_with_metadata;
use crate::error::{Error, Result};
use crate::models::unet::UNet2DConditionModel;
use crate::nn::modules::layer_paths;
use super::components::{text_encoder_of, TEXT_ENCODERS};
use crate::nn::LoraWeights;

/// Which module names a kohya file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KohyaNames {
    /// diffusers module paths (sd-scripts for SD 1.x / 2.x).
    Diffusers,
    /// Original LDM / SGM names (sd-scripts for SDXL).
    Ldm,
}

/// What the LDM numbering needs to know about a UNet: resnets per block,
/// which blocks have attentions, and whether it is an SDXL UNet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UNetLayout {
    /// (resnets, has attentions) of each down block.
    pub down: Vec<(usize, bool)>,
    /// (resnets, has attentions) of each up block.
    pub up: Vec<(usize, bool)>,
    /// `addition_embed_type = "text_time"`.
    pub sdxl: bool,
}

impl UNetLayout {
    pub fn of(unet: &UNet2DConditionModel) -> Self {
        Self {
            down: unet.down_blocks.iter().map(|b| (b.resnets.len(), !b.attentions.is_empty())).collect(),
            up: unet.up_blocks.iter().map(|b| (b.resnets.len(), !b.attentions.is_empty())).collect(),
            sdxl: unet.add_embedding.is_some(),
        }
    }

    /// The names sd-scripts would write for this family.
    pub fn default_names(&self) -> KohyaNames {
        if self.sdxl {
            KohyaNames::Ldm
        } else {
            KohyaNames::Diffusers
        }
    }
}

fn resnet_part(rest: &[&str]) -> Option<String> {
    let head = match *rest.first()? {
        "conv1" => "in_layers.2",
        "conv2" => "out_layers.3",
        "time_emb_proj" => "emb_layers.1",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(std::iter::once(head).chain(rest[1..].iter().copied()).collect::<Vec<_>>().join("."))
}

/// The LDM module path of a diffusers UNet module path, if it has one.
pub fn ldm_path(path: &str, layout: &UNetLayout) -> Option<String> {
    let s: Vec<&str> = path.split('.').collect();
    let idx = |i: &str| i.parse::<usize>().ok();
    let tail = |from: usize| s[from..].join(".");
    Some(match s.as_slice() {
        ["conv_in"] => "input_blocks.0.0".into(),
        ["conv_out"] => "out.2".into(),
        ["time_embedding", "linear_1"] => "time_embed.0".into(),
        ["time_embedding", "linear_2"] => "time_embed.2".into(),
        ["add_embedding", "linear_1"] => "label_emb.0.0".into(),
        ["add_embedding", "linear_2"] => "label_emb.0.2".into(),
        ["down_blocks", i, kind, j, ..] => {
            let (i, j) = (idx(i)?, idx(j)?);
            let (n, _) = *layout.down.get(i)?;
            let base = 1 + layout.down[..i].iter().map(|(r, _)| r + 1).sum::<usize>();
            match *kind {
                "resnets" => format!("input_blocks.{}.0.{}", base + j, resnet_part(&s[4..])?),
                "attentions" => format!("input_blocks.{}.1.{}", base + j, tail(4)),
                "downsamplers" if s[4..] == ["conv"] => format!("input_blocks.{}.0.op", base + n),
                _ => return None,
            }
        }
        ["mid_block", "resnets", j, ..] => format!("middle_block.{}.{}", 2 * idx(j)?, resnet_part(&s[3..])?),
        ["mid_block", "attentions", "0", ..] => format!("middle_block.1.{}", tail(3)),
        ["up_blocks", i, kind, j, ..] => {
            let (i, j) = (idx(i)?, idx(j)?);
            let (n, attn) = *layout.up.get(i)?;
            let base = layout.up[..i].iter().map(|(r, _)| r).sum::<usize>();
            match *kind {
                "resnets" => format!("output_blocks.{}.0.{}", base + j, resnet_part(&s[4..])?),
                "attentions" => format!("output_blocks.{}.1.{}", base + j, tail(4)),
                "upsamplers" if s[4..] == ["conv"] => format!("output_blocks.{}.{}.conv", base + n - 1, if attn { 2 } else { 1 }),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// sd-scripts' prefix for text encoder `index`: `lora_te` for SD's only
/// encoder, `lora_te1` / `lora_te2` for SDXL's two.
fn te_prefix(index: usize, sdxl: bool) -> String {
    if sdxl {
        format!("lora_te{}", index + 1)
    } else {
        "lora_te".to_string()
    }
}

/// `lora_unet_<name>` for a diffusers module path; `lora_te[12]_<name>`
/// for a `text_encoder[_2].` path (transformers 4 module names, dots as
/// underscores: `lora_te_text_model_encoder_layers_0_self_attn_q_proj`).
pub fn kohya_name(path: &str, layout: &UNetLayout, names: KohyaNames) -> Option<String> {
    if let Some((i, rest)) = text_encoder_of(path) {
        return Some(format!("{}_{}", te_prefix(i, layout.sdxl), rest.replace('.', "_")));
    }
    let name = match names {
        KohyaNames::Diffusers => path.to_string(),
        KohyaNames::Ldm => ldm_path(path, layout)?,
    };
    Some(format!("lora_unet_{}", name.replace('.', "_")))
}

/// The tensors of a kohya file (alpha as a 0-d f32, as sd-scripts saves it).
pub fn to_kohya_tensors(weights: &[LoraWeights], layout: &UNetLayout, names: KohyaNames) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for w in weights {
        let name = kohya_name(&w.path, layout, names)
            .ok_or_else(|| Error::invalid(format!("module {} has no kohya ({names:?}) name", w.path)))?;
        out.insert(format!("{name}.lora_down.weight"), w.lora_a.clone());
        out.insert(format!("{name}.lora_up.weight"), w.lora_b.clone());
        out.insert(format!("{name}.alpha"), Tensor::new(w.alpha as f32, w.lora_a.device())?);
    }
    Ok(out)
}

/// Write a kohya LoRA file (with sd-scripts' `ss_network_*` metadata).
pub fn save_kohya(path: &Path, weights: &[LoraWeights], layout: &UNetLayout, names: KohyaNames) -> Result<()> {
    let tensors = to_kohya_tensors(weights, layout, names)?;
    let mut meta = HashMap::new();
    meta.insert("ss_network_module".to_string(), "networks.lora".to_string());
    if let Some(w) = weights.first() {
        meta.insert("ss_network_dim".to_string(), w.rank().to_string());
        meta.insert("ss_network_alpha".to_string(), w.alpha.to_string());
    }
    meta.insert("ss_base_model_version".to_string(), if layout.sdxl { "sdxl_base_v1-0" } else { "sd_v1" }.to_string());
    meta.insert("psotune_version".to_string(), env!("CARGO_PKG_VERSION").to_string());
    write_with_metadata(path, &tensors, Some(meta))
}

/// The CLIP module path of a kohya text-encoder name (after `lora_te*_`):
/// `text_model_encoder_layers_3_self_attn_q_proj` ->
/// `text_model.encoder.layers.3.self_attn.q_proj`; also `text_projection`.
fn te_module_path(name: &str) -> Option<String> {
    if name == "text_projection" {
        return Some(name.into());
    }
    let rest = name.strip_prefix("text_model_encoder_layers_")?;
    let (i, leaf) = rest.split_once('_')?;
    i.parse::<usize>().ok()?;
    let leaf = match leaf {
        "self_attn_q_proj" | "self_attn_k_proj" | "self_attn_v_proj" | "self_attn_out_proj" => format!("self_attn.{}", &leaf["self_attn_".len()..]),
        "mlp_fc1" | "mlp_fc2" => format!("mlp.{}", &leaf["mlp_".len()..]),
        _ => return None,
    };
    Some(format!("text_model.encoder.layers.{i}.{leaf}"))
}

/// Adapters of a kohya file: UNet module names looked up under both
/// spellings among `unet`'s modules, text-encoder names (`lora_te_`,
/// `lora_te1_`, `lora_te2_`) mapped to `text_encoder[_2].` paths;
/// unknown names are errors naming the keys.
pub fn read_kohya(path: &Path, tensors: &HashMap<String, Tensor>, unet: &mut UNet2DConditionModel) -> Result<Vec<LoraWeights>> {
    let bad = |msg: String| super::lora_error(path, msg);
    let layout = UNetLayout::of(unet);
    let mut lookup: HashMap<String, String> = HashMap::new();
    for (p, _) in layer_paths(unet)? {
        for names in [KohyaNames::Diffusers, KohyaNames::Ldm] {
            if let Some(k) = kohya_name(&p, &layout, names) {
                lookup.insert(k, p.clone());
            }
        }
    }
    let te_path = |name: &str| -> Option<String> {
        let (i, rest) = if let Some(r) = name.strip_prefix("lora_te1_") {
            (0, r)
        } else if let Some(r) = name.strip_prefix("lora_te2_") {
            (1, r)
        } else {
            (0, name.strip_prefix("lora_te_")?)
        };
        te_module_path(rest).map(|p| format!("{}.{p}", TEXT_ENCODERS[i]))
    };
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for k in names {
        let Some(name) = k.strip_suffix(".lora_down.weight") else {
            let known = [".lora_up.weight", ".alpha"].iter().any(|s| k.strip_suffix(s).is_some_and(|n| tensors.contains_key(&format!("{n}.lora_down.weight"))));
            if !known {
                unknown.push(k.clone());
            }
            continue;
        };
        let Some(module) = lookup.get(name).cloned().or_else(|| te_path(name)) else {
            unknown.push(k.clone());
            continue;
        };
        let a = &tensors[k];
        let b = tensors.get(&format!("{name}.lora_up.weight")).ok_or_else(|| bad(format!("{k} has no lora_up")))?;
        if a.rank() < 2 || b.rank() < 2 {
            return Err(bad(format!("{name}: lora_down {:?} / lora_up {:?} are not matrices", a.dims(), b.dims())));
        }
        let rank = a.dim(0)?;
        let alpha = match tensors.get(&format!("{name}.alpha")) {
            Some(t) => t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.first().copied().unwrap_or(rank as f64),
            None => rank as f64,
        };
        out.push(LoraWeights { path: module.clone(), lora_a: a.clone(), lora_b: b.clone(), alpha });
    }
    if !unknown.is_empty() {
        return Err(bad(format!("{} keys match no UNet or text-encoder module: {}", unknown.len(), unknown.join(", "))));
    }
    Ok(out)
}
