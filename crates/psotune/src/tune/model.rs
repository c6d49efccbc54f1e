//! What a run trains: LoRA adapters on the UNet and optionally the text
//! encoders (fresh or from a file), or full fine-tuning of chosen
//! parameter groups.

use candle_core::Var;

use super::config::LoraSection;
use crate::error::{Error, Result};
use crate::export;
use crate::models::unet::UNet2DConditionModel;
use crate::models::clip::text_encoder_targets;
use crate::nn::{anchor_lora, apply_lora, apply_lora_with, make_trainable, LoraConfig, LoraInit, LoraSet, LoraSwitch, LoraTargets};
use crate::pipeline::Pipeline;

pub enum Trainable {
    Lora(LoraSet),
    Full(Vec<(String, Var)>),
}

impl Trainable {
    /// Attach what `cfg` asks for to `unet`.
    pub fn attach(unet: &mut UNet2DConditionModel, cfg: &LoraSection) -> Result<Self> {
        if let Some(groups) = &cfg.full {
            let pats: Vec<&str> = groups.iter().map(String::as_str).collect();
            let targets = LoraTargets::patterns(&pats)?;
            return Ok(Trainable::Full(make_trainable(unet, &targets, true)?));
        }
        if let Some(file) = &cfg.init_from {
            let set = export::load_lora(file, unet, &LoraSwitch::new())?;
            // The frozen model is the one the run starts from (p_pre).
            anchor_lora(unet).map_err(|e| Error::invalid(format!("lora.init-from {}: {e}", file.display())))?;
            return Ok(Trainable::Lora(set));
        }
        let targets = LoraTargets::parse(&cfg.targets)?;
        let lc = LoraConfig { rank: cfg.rank, alpha: cfg.alpha, targets, init: LoraInit::Kaiming, seed: cfg.seed };
        Ok(Trainable::Lora(apply_lora(unet, &lc).map_err(|e| Error::invalid(format!("lora: {e}")))?))
    }

    /// Attach what `cfg` asks for to the pipeline: [`Self::attach`] on the
    /// UNet; with `lora.text-encoder`, adapters on every text encoder too
    /// (under the UNet's switch, named `text_encoder[_2].<path>`). A LoRA
    /// file (`init-from`) brings its text-encoder adapters along, and
    /// fresh ones are added when the file has none but they are asked for.
    /// The file's adapters are anchored: switched off, they keep the
    /// values they started from (the frozen model is the starting model).
    pub fn attach_pipeline(pipe: &mut Pipeline, cfg: &LoraSection) -> Result<Self> {
        if cfg.full.is_some() {
            return Self::attach(&mut pipe.unet, cfg);
        }
        let mut set = match &cfg.init_from {
            Some(file) => {
                let mut encoders: Vec<_> = pipe.text_encoders.iter_mut().map(|t| &mut t.model).collect();
                let set = export::load_lora_all(file, &mut pipe.unet, &mut encoders, &LoraSwitch::new())?;
                // The frozen model (adapters off) is the model the run
                // starts from, the file's LoRA included: PSO's p_pre.
                let anchor = |e: candle_core::Error| Error::invalid(format!("lora.init-from {}: {e}", file.display()));
                anchor_lora(&mut pipe.unet).map_err(anchor)?;
                for te in encoders.iter_mut() {
                    anchor_lora(*te).map_err(anchor)?;
                }
                set
            }
            None => match Self::attach(&mut pipe.unet, cfg)? {
                Trainable::Lora(set) => set,
                full => return Ok(full),
            },
        };
        let has_te = set.adapters.iter().any(|(p, _)| export::text_encoder_of(p).is_some());
        if cfg.text_encoder && !has_te {
            let (rank, alpha, targets) = cfg.text_encoder_settings();
            let targets = text_encoder_targets(targets)?;
            for (i, te) in pipe.text_encoders.iter_mut().enumerate() {
                let lc = LoraConfig { rank, alpha, targets: targets.clone(), init: LoraInit::Kaiming, seed: cfg.seed.wrapping_add(1 + i as u64) };
                let te_set = apply_lora_with(&mut te.model, &lc, &set.switch).map_err(|e| Error::invalid(format!("lora ({}): {e}", export::TEXT_ENCODERS[i])))?;
                set.adapters.extend(export::prefixed(te_set, i).adapters);
            }
        }
        Ok(Trainable::Lora(set))
    }

    /// Whether text-encoder adapters are trained (prompt embeddings must
    /// then be computed in the graph every step).
    pub fn trains_text_encoder(&self) -> bool {
        match self {
            Trainable::Lora(set) => set.adapters.iter().any(|(p, _)| export::text_encoder_of(p).is_some()),
            Trainable::Full(_) => false,
        }
    }

    /// Trained parameters by checkpoint name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        match self {
            Trainable::Lora(set) => set.vars(),
            Trainable::Full(v) => v.clone(),
        }
    }

    /// The switch that turns the adapters off (None for full fine-tuning,
    /// which has no frozen model to compare with).
    pub fn switch(&self) -> Option<&LoraSwitch> {
        match self {
            Trainable::Lora(set) => Some(&set.switch),
            Trainable::Full(_) => None,
        }
    }
}
