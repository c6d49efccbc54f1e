//! What the emoji-world probes (`one_step_probe`, `step_mix_probe`) share:
//! their arguments, the val-fold Noto prompts and a judge against those
//! concepts' real Noto images. Run from the repository root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use psotune::data::{load_image_batch, ImageFolder};
use psotune::error::{Error, Result};
use psotune::eval::{Judge, PromptSet};
use psotune::models::evaluator::Evaluator;

pub const MODEL: &str = "models/emoji";

pub struct Probe {
    /// The LoRA file to probe.
    pub lora: PathBuf,
    pub prompts: PromptSet,
    pub judge: Judge,
}

/// The evaluator shipped with the emoji model.
pub fn evaluator() -> Result<Evaluator> {
    Evaluator::load(&Path::new(MODEL).join("evaluator"), &Device::Cpu)
}

/// Reads `LORA.safetensors [PROMPTS]` (default: all 187 val-fold Noto prompts).
pub fn from_args(name: &str) -> Result<Probe> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lora = PathBuf::from(args.first().ok_or_else(|| Error::invalid(format!("usage: {name} LORA.safetensors [PROMPTS]")))?);
    let n = match args.get(1) {
        Some(s) => s.parse().map_err(|_| Error::invalid(format!("PROMPTS: {s:?} is not a count")))?,
        None => 187,
    };
    let folder = ImageFolder::open(Path::new("assets/emoji"))?;
    let select: BTreeMap<String, String> = [("style", "noto"), ("fold", "val")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let reference: Vec<_> = folder.items.iter().filter(|i| i.matches(&select)).collect();
    let judge = Judge::new(evaluator()?, &load_image_batch(&reference, &Device::Cpu)?)?;
    let prompts = PromptSet::from_folder(&folder, &select, n, 0)?;
    Ok(Probe { lora, prompts, judge })
}
