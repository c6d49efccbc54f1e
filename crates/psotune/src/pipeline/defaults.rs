//! What a model folder should be sampled with when the user does not say:
//! first psotune's own `_psotune` entry in `model_index.json` (models we
//! ship), then a short table of known distilled models matched on the folder
//! name (hub folders carry no model id), then the scheduler config.

use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use super::folder::ModelFolder;
use crate::error::{read_json, Error, Result};

/// The few-step samplers of pso.md §1 and DDIM for multi-step teachers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Euler-ancestral with `trailing` spacing (SD-Turbo, SDXL-Turbo).
    Turbo,
    /// Predict x0, re-noise with fresh noise at the next timestep (DMD2).
    Dmd2,
    /// LCM consistency sampling with boundary scalings.
    Lcm,
    /// Deterministic DDIM (eta 0) for multi-step teachers.
    Ddim,
}

impl FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "turbo" => Ok(Self::Turbo),
            "dmd2" => Ok(Self::Dmd2),
            "lcm" => Ok(Self::Lcm),
            "ddim" => Ok(Self::Ddim),
            _ => Err(Error::invalid(format!("unknown sampler {s:?} (expected turbo, dmd2, lcm or ddim)"))),
        }
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Turbo => "turbo",
            Self::Dmd2 => "dmd2",
            Self::Lcm => "lcm",
            Self::Ddim => "ddim",
        };
        f.write_str(s)
    }
}

/// Sampling settings a model is meant to be used with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SamplingDefaults {
    /// Which sampler.
    pub sampler: SamplerKind,
    /// Number of network calls.
    pub steps: usize,
    /// Explicit timesteps (DMD2), else the sampler's own spacing.
    #[serde(default)]
    pub timesteps: Option<Vec<usize>>,
    /// Image size in pixels (None: the UNet's sample size times the VAE factor).
    #[serde(default)]
    pub width: Option<usize>,
    #[serde(default)]
    pub height: Option<usize>,
    /// Classifier-free guidance scale; 0 (or 1) means none, as distilled
    /// models use. For a UNet that embeds the scale (the full LCM UNets),
    /// the scale it is given; 0 there means "not named", and the pipeline
    /// uses [`LCM_GUIDANCE`].
    #[serde(default)]
    pub guidance: f64,
}

/// The guidance scale of a UNet with a guidance embedding when its folder
/// names none: diffusers' `LatentConsistencyModelPipeline.__call__` default.
pub const LCM_GUIDANCE: f64 = 8.5;

struct Known {
    /// Substring of the lower-cased folder name.
    pattern: &'static str,
    defaults: fn() -> SamplingDefaults,
    /// Where the numbers come from.
    _source: &'static str,
}

fn sd(sampler: SamplerKind, steps: usize, timesteps: Option<Vec<usize>>, size: usize) -> SamplingDefaults {
    SamplingDefaults { sampler, steps, timesteps, width: Some(size), height: Some(size), guidance: 0.0 }
}

/// Order matters: the first pattern that matches wins.
const KNOWN: &[Known] = &[
    Known { pattern: "sdxl-turbo", defaults: || sd(SamplerKind::Turbo, 1, None, 512), _source: "SDXL-Turbo model card: 1 step, guidance 0, 512 px" },
    Known { pattern: "sd-turbo", defaults: || sd(SamplerKind::Turbo, 1, None, 512), _source: "SD-Turbo model card: 1 step, guidance 0, 512 px" },
    Known { pattern: "dmd2", defaults: || sd(SamplerKind::Dmd2, 4, Some(vec![999, 749, 499, 249]), 1024), _source: "DMD2 4-step SDXL: timesteps 999/749/499/249, 1024 px" },
    Known { pattern: "lcm", defaults: || SamplingDefaults { sampler: SamplerKind::Lcm, steps: 4, timesteps: None, width: None, height: None, guidance: 0.0 }, _source: "LCM model cards: 4 steps" },
];

#[derive(Deserialize)]
struct SchedulerHead {
    #[serde(rename = "_class_name", default)]
    class_name: String,
    #[serde(default)]
    timestep_spacing: Option<String>,
}

impl SamplingDefaults {
    /// Resolve the defaults of `folder`; sizes left `None` are filled by the
    /// caller from the UNet and VAE configs.
    pub fn for_folder(folder: &ModelFolder) -> Result<Self> {
        if let Some(v) = &folder.psotune {
            if let Some(s) = v.get("sampling") {
                return serde_json::from_value(s.clone()).map_err(|e| {
                    Error::config(folder.root.join("model_index.json"), format!("_psotune.sampling: {e}"))
                });
            }
        }
        let name = folder.root.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if let Some(k) = KNOWN.iter().find(|k| name.contains(k.pattern)) {
            return Ok((k.defaults)());
        }
        Self::from_scheduler(&folder.component_dir("scheduler").join("scheduler_config.json"))
    }

    fn from_scheduler(path: &Path) -> Result<Self> {
        let head: SchedulerHead = read_json(path)?;
        let d = |sampler, steps, guidance| SamplingDefaults { sampler, steps, timesteps: None, width: None, height: None, guidance };
        Ok(match head.class_name.as_str() {
            "EulerAncestralDiscreteScheduler" if head.timestep_spacing.as_deref() == Some("trailing") => d(SamplerKind::Turbo, 1, 0.0),
            "EulerAncestralDiscreteScheduler" => d(SamplerKind::Turbo, 4, 0.0),
            "LCMScheduler" => d(SamplerKind::Lcm, 4, 0.0),
            // A multi-step (teacher) model: DDIM with the usual guidance.
            _ => d(SamplerKind::Ddim, 25, 7.5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_config_decides_when_nothing_else_does() {
        let d = crate::scratch::ScratchDir::new("psotune-defaults").unwrap();
        let p = d.join("scheduler_config.json");
        std::fs::write(&p, r#"{"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}"#).unwrap();
        let s = SamplingDefaults::from_scheduler(&p).unwrap();
        assert_eq!((s.sampler, s.steps, s.guidance), (SamplerKind::Turbo, 1, 0.0));
        std::fs::write(&p, r#"{"_class_name": "LCMScheduler"}"#).unwrap();
        assert_eq!(SamplingDefaults::from_scheduler(&p).unwrap().sampler, SamplerKind::Lcm);
        std::fs::write(&p, r#"{"_class_name": "PNDMScheduler"}"#).unwrap();
        let s = SamplingDefaults::from_scheduler(&p).unwrap();
        assert_eq!((s.sampler, s.steps), (SamplerKind::Ddim, 25));
    }

    #[test]
    fn known_table_matches_folder_names() {
        let find = |n: &str| KNOWN.iter().find(|k| n.contains(k.pattern)).map(|k| (k.defaults)());
        assert_eq!(find("sdxl-turbo").unwrap().sampler, SamplerKind::Turbo);
        assert_eq!(find("dmd2-sdxl-4step").unwrap().timesteps, Some(vec![999, 749, 499, 249]));
        assert!(find("stable-diffusion-2-1").is_none());
        assert!("foo".parse::<SamplerKind>().is_err());
    }
}
