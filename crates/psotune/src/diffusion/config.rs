//! The diffusers `scheduler/scheduler_config.json`, resolved to concrete values.
//!
//! diffusers fills keys a file lacks with the defaults of the class that
//! loads it, and those defaults differ per class (LCMScheduler defaults to the
//! SD `scaled_linear` schedule, DDIMScheduler to `linear` with `clip_sample`
//! on, the Euler schedulers to `linspace` spacing). We resolve missing keys
//! with the defaults of the file's own `_class_name`, as
//! `SchedulerClass.from_pretrained` does. Unknown keys are ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::prediction::Prediction;
use crate::error::{read_json, Error};

/// How betas are laid out over the training timesteps (diffusers `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// betas = linspace(beta_start, beta_end, n)
    Linear,
    /// betas = linspace(sqrt(beta_start), sqrt(beta_end), n)^2 (all SD models)
    ScaledLinear,
    /// Nichol & Dhariwal's cosine alpha_bar, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// How inference timesteps are picked from the training timesteps (diffusers
/// `timestep_spacing`; table 2 of "Common Diffusion Noise Schedules and Sample
/// Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// A resolved diffusers scheduler config. It serializes back to diffusers'
/// key names, so `--print-config` output can be read again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawSchedulerConfig")]
pub struct SchedulerConfig {
    /// diffusers class that wrote the file, e.g. "EulerAncestralDiscreteScheduler".
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; overrides beta_start/beta_end/beta_schedule.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Prediction,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    /// DDIM/LCM: the alpha_bar after the last step is 1 (else alpha_bar(0)).
    pub set_alpha_to_one: bool,
    /// DDIM/LCM: clamp the predicted x0 to +-clip_sample_range.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// LCM: the timestep is multiplied by this in the boundary scalings.
    pub timestep_scaling: f64,
    /// LCM: length of the distillation schedule its timesteps are drawn from.
    pub original_inference_steps: usize,
    /// Dynamic thresholding (Imagen); not implemented, rejected by `validate`.
    pub thresholding: bool,
    /// Zero-terminal-SNR rescaling; not implemented, rejected by `validate`.
    pub rescale_betas_zero_snr: bool,
}

impl SchedulerConfig {
    /// Read `scheduler_config.json`; every error names the file.
    pub fn from_file(path: impl AsRef<Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let config: Self = read_json(path)?;
        config.validate().map_err(|e| Error::config(path, e.to_string()))?;
        Ok(config)
    }

    /// The config of a class with every key at its diffusers default.
    pub fn defaults_for(class_name: &str) -> Self {
        RawSchedulerConfig { class_name: Some(class_name.to_string()), ..Default::default() }.into()
    }

    /// The SD scaled_linear schedule shared by SD-Turbo, SDXL-Turbo and DMD2:
    /// EulerAncestralDiscreteScheduler with trailing spacing, as shipped in
    /// stabilityai/sdxl-turbo `scheduler/scheduler_config.json`.
    pub fn sd_turbo() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: TimestepSpacing::Trailing,
            ..Self::defaults_for("EulerAncestralDiscreteScheduler")
        }
    }

    /// Reject options psotune does not implement, instead of silently
    /// sampling something else than diffusers would.
    pub fn validate(&self) -> Result<(), super::ScheduleError> {
        use super::ScheduleError::{InvalidSchedule, Unsupported};
        if self.thresholding {
            return Err(Unsupported("thresholding = true".into()));
        }
        if self.rescale_betas_zero_snr {
            return Err(Unsupported("rescale_betas_zero_snr = true".into()));
        }
        if self.num_train_timesteps == 0 {
            return Err(InvalidSchedule("num_train_timesteps is 0".into()));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != self.num_train_timesteps {
                return Err(InvalidSchedule(format!(
                    "trained_betas has {} values but num_train_timesteps is {}",
                    betas.len(),
                    self.num_train_timesteps
                )));
            }
        }
        if !(self.timestep_scaling.is_finite() && self.clip_sample_range.is_finite()) {
            return Err(InvalidSchedule("timestep_scaling and clip_sample_range must be finite".into()));
        }
        Ok(())
    }
}

/// The file as written: every key optional (JSON `null` counts as absent).
#[derive(Default, Deserialize)]
struct RawSchedulerConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<BetaSchedule>,
    trained_betas: Option<Vec<f64>>,
    prediction_type: Option<Prediction>,
    timestep_spacing: Option<TimestepSpacing>,
    steps_offset: Option<usize>,
    set_alpha_to_one: Option<bool>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    timestep_scaling: Option<f64>,
    original_inference_steps: Option<usize>,
    thresholding: Option<bool>,
    rescale_betas_zero_snr: Option<bool>,
}

/// Defaults of diffusers' `__init__` signatures that differ between classes.
struct ClassDefaults {
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    timestep_spacing: TimestepSpacing,
    clip_sample: bool,
}

fn class_defaults(class_name: Option<&str>) -> ClassDefaults {
    // scheduling_lcm.py, scheduling_euler_(ancestral_)discrete.py,
    // scheduling_ddim.py / scheduling_ddpm.py; anything else gets the
    // DDPM-family defaults without clipping.
    let ddpm_like = |timestep_spacing, clip_sample| ClassDefaults {
        beta_start: 0.0001,
        beta_end: 0.02,
        beta_schedule: BetaSchedule::Linear,
        timestep_spacing,
        clip_sample,
    };
    match class_name {
        Some("LCMScheduler") => ClassDefaults {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: TimestepSpacing::Leading,
            clip_sample: false,
        },
        Some(c) if c.starts_with("Euler") => ddpm_like(TimestepSpacing::Linspace, false),
        Some("DDIMScheduler" | "DDPMScheduler") => ddpm_like(TimestepSpacing::Leading, true),
        _ => ddpm_like(TimestepSpacing::Leading, false),
    }
}

impl From<RawSchedulerConfig> for SchedulerConfig {
    fn from(raw: RawSchedulerConfig) -> Self {
        let d = class_defaults(raw.class_name.as_deref());
        Self {
            num_train_timesteps: raw.num_train_timesteps.unwrap_or(1000),
            beta_start: raw.beta_start.unwrap_or(d.beta_start),
            beta_end: raw.beta_end.unwrap_or(d.beta_end),
            beta_schedule: raw.beta_schedule.unwrap_or(d.beta_schedule),
            trained_betas: raw.trained_betas,
            prediction_type: raw.prediction_type.unwrap_or(Prediction::Epsilon),
            timestep_spacing: raw.timestep_spacing.unwrap_or(d.timestep_spacing),
            steps_offset: raw.steps_offset.unwrap_or(0),
            set_alpha_to_one: raw.set_alpha_to_one.unwrap_or(true),
            clip_sample: raw.clip_sample.unwrap_or(d.clip_sample),
            clip_sample_range: raw.clip_sample_range.unwrap_or(1.0),
            timestep_scaling: raw.timestep_scaling.unwrap_or(10.0),
            original_inference_steps: raw.original_inference_steps.unwrap_or(50),
            thresholding: raw.thresholding.unwrap_or(false),
            rescale_betas_zero_snr: raw.rescale_betas_zero_snr.unwrap_or(false),
            class_name: raw.class_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file shaped like stabilityai/sdxl-turbo's scheduler/scheduler_config.json,
    /// with keys we do not model (interpolation_type, use_karras_sigmas, ...).
    const TURBO: &str = r#"{
      "_class_name": "EulerAncestralDiscreteScheduler",
      "_diffusers_version": "0.24.0.dev0",
      "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
      "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000,
      "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false,
      "skip_prk_steps": true, "steps_offset": 1, "timestep_spacing": "trailing",
      "trained_betas": null, "use_karras_sigmas": false
    }"#;

    fn temp_file(name: &str, text: &str) -> crate::scratch::ScratchFile {
        crate::scratch::ScratchFile::new("psotune-config-test", name, text).unwrap()
    }

    #[test]
    fn reads_a_turbo_config_and_ignores_unknown_keys() {
        let c = SchedulerConfig::from_file(temp_file("turbo.json", TURBO)).unwrap();
        assert_eq!(c.class_name.as_deref(), Some("EulerAncestralDiscreteScheduler"));
        assert_eq!((c.beta_schedule, c.beta_start, c.beta_end), (BetaSchedule::ScaledLinear, 0.00085, 0.012));
        assert_eq!((c.timestep_spacing, c.steps_offset, c.set_alpha_to_one), (TimestepSpacing::Trailing, 1, false));
        assert_eq!((c.prediction_type, c.trained_betas.as_ref()), (Prediction::Epsilon, None));
        // serializes with diffusers' key names and reads back the same
        let back: SchedulerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::to_string(&c).unwrap().contains("\"_class_name\""));
    }

    /// Missing keys take the defaults of the file's own class (diffusers
    /// `__init__` signatures).
    #[test]
    fn defaults_follow_the_class() {
        let lcm: SchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "LCMScheduler", "prediction_type": "v_prediction"}"#).unwrap();
        assert_eq!((lcm.beta_schedule, lcm.beta_start, lcm.beta_end), (BetaSchedule::ScaledLinear, 0.00085, 0.012));
        assert_eq!((lcm.timestep_scaling, lcm.original_inference_steps, lcm.clip_sample), (10.0, 50, false));
        assert_eq!(lcm.prediction_type, Prediction::VPrediction);
        let ddim = SchedulerConfig::defaults_for("DDIMScheduler");
        assert_eq!(
            (ddim.beta_schedule, ddim.timestep_spacing, ddim.clip_sample),
            (BetaSchedule::Linear, TimestepSpacing::Leading, true)
        );
        let euler = SchedulerConfig::defaults_for("EulerDiscreteScheduler");
        assert_eq!(
            (euler.beta_start, euler.timestep_spacing, euler.clip_sample),
            (0.0001, TimestepSpacing::Linspace, false)
        );
    }

    #[test]
    fn errors_name_the_file() {
        let missing = std::env::temp_dir().join("psotune-no-such-dir/scheduler_config.json");
        let e = SchedulerConfig::from_file(&missing).unwrap_err();
        assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("psotune-no-such-dir"), "{e}");

        let p = temp_file("bad_schedule.json", r#"{"beta_schedule": "sigmoid"}"#);
        let e = SchedulerConfig::from_file(&p).unwrap_err();
        assert!(matches!(e, Error::Json { .. }) && e.to_string().contains("bad_schedule.json"), "{e}");

        let p = temp_file("thresholding.json", r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#);
        let e = SchedulerConfig::from_file(&p).unwrap_err();
        assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("thresholding.json"), "{e}");
        assert!(e.to_string().contains("thresholding"), "{e}");

        let p = temp_file("spacing.json", r#"{"timestep_spacing": "karras"}"#);
        assert!(matches!(SchedulerConfig::from_file(&p), Err(Error::Json { .. })));
    }
}
