//! What a run trains: LoRA adapters on the UNet (fresh or from a file), or
//! full fine-tuning of chosen parameter groups.

use candle_core::Var;

use super::config::LoraSection;
use crate::error::{Error, Result};
use crate::export;
use crate::models::unet::UNet2DConditionModel;
use crate::nn::{apply_lora, make_trainable, LoraConfig, LoraInit, LoraSet, LoraSwitch, LoraTargets};

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
            return Ok(Trainable::Lora(export::load_lora(file, unet, &LoraSwitch::new())?));
        }
        let targets = LoraTargets::parse(&cfg.targets)?;
        let lc = LoraConfig { rank: cfg.rank, alpha: cfg.alpha, targets, init: LoraInit::Kaiming, seed: cfg.seed };
        Ok(Trainable::Lora(apply_lora(unet, &lc).map_err(|e| Error::invalid(format!("lora: {e}")))?))
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
