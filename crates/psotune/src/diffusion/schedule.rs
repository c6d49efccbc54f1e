//! The discrete noise schedule: betas, alpha_bar = prod(1 - beta) and the
//! Karras-style sigma = sqrt((1 - ab) / ab), in f64.
//!
//! diffusers builds the same arrays in float32 (`torch.linspace(...,
//! dtype=torch.float32)`, then `torch.cumprod`), so its alpha_bar differs
//! from ours by up to ~1e-6 relative (1e-5 for the cosine schedule, whose
//! alpha_bar(999) is 2.4e-9); tests compare against both an f64 replica and
//! diffusers itself.

use candle_core::{Result, Tensor};

use super::config::{BetaSchedule, SchedulerConfig};
use super::prediction::per_sample_mul;
use super::ScheduleError;

#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f64>,
    /// sigma per integer timestep, used for interpolation at fractional t.
    sigmas: Vec<f64>,
}

impl NoiseSchedule {
    /// Build from the betas of each training timestep; every beta must lie in
    /// (0, 1) so that alpha_bar decreases strictly and every sigma is > 0.
    pub fn from_betas(betas: &[f64]) -> std::result::Result<Self, ScheduleError> {
        if betas.is_empty() {
            return Err(ScheduleError::InvalidSchedule("no betas".into()));
        }
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
            return Err(ScheduleError::InvalidSchedule(format!("beta[{i}] = {b} is not in (0, 1)")));
        }
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .scan(1.0, |prod, b| {
                *prod *= 1.0 - b;
                Some(*prod)
            })
            .collect();
        let sigmas = alphas_cumprod.iter().map(|ab| ((1.0 - ab) / ab).sqrt()).collect();
        Ok(Self { alphas_cumprod, sigmas })
    }

    /// The schedule a diffusers scheduler builds from its config.
    pub fn from_config(config: &SchedulerConfig) -> std::result::Result<Self, ScheduleError> {
        config.validate()?;
        match &config.trained_betas {
            Some(betas) => Self::from_betas(betas),
            None => Self::from_betas(&betas(
                config.beta_schedule,
                config.beta_start,
                config.beta_end,
                config.num_train_timesteps,
            )),
        }
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Largest valid timestep, `num_train_timesteps - 1`.
    pub fn max_timestep(&self) -> usize {
        self.alphas_cumprod.len() - 1
    }

    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// alpha_bar at a (possibly fractional) timestep. Exact at integers; in
    /// between it is 1 / (1 + sigma(t)^2) with the interpolated sigma, the
    /// noise level the Euler samplers actually use there. t is clamped to
    /// [0, max_timestep] like `np.interp`.
    pub fn alpha_bar(&self, t: f64) -> f64 {
        if t.fract() == 0.0 && t >= 0.0 && t <= self.max_timestep() as f64 {
            return self.alphas_cumprod[t as usize];
        }
        let s = self.sigma(t);
        1.0 / (1.0 + s * s)
    }

    /// sigma(t) = sqrt((1 - ab) / ab), linearly interpolated between integer
    /// timesteps like diffusers' `np.interp(timesteps, arange(T), sigmas)`
    /// (scheduling_euler_ancestral_discrete.py `set_timesteps`), clamped at
    /// the ends.
    pub fn sigma(&self, t: f64) -> f64 {
        let last = self.max_timestep();
        if t.is_nan() || t <= 0.0 {
            return self.sigmas[0];
        }
        if t >= last as f64 {
            return self.sigmas[last];
        }
        let i = t.floor() as usize;
        let w = t - i as f64;
        // np.interp's form: fp[i] + (x - xp[i]) * slope
        self.sigmas[i] + w * (self.sigmas[i + 1] - self.sigmas[i])
    }

    /// Forward noising x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (diffusers
    /// `DDPMScheduler.add_noise`). `t` holds one timestep for the batch or one
    /// per sample. The result is the variance-preserving sample the UNet sees
    /// as is; an Euler sampler's sigma-space sample is x_t * sqrt(1 + sigma^2).
    pub fn add_noise(&self, x0: &Tensor, eps: &Tensor, t: &[f64]) -> Result<Tensor> {
        if t.is_empty() {
            candle_core::bail!("add_noise: no timestep given");
        }
        let ab: Vec<f64> = t.iter().map(|t| self.alpha_bar(*t)).collect();
        let a: Vec<f64> = ab.iter().map(|ab| ab.sqrt()).collect();
        let s: Vec<f64> = ab.iter().map(|ab| (1.0 - ab).sqrt()).collect();
        per_sample_mul(x0, &a)? + per_sample_mul(eps, &s)?
    }
}

/// Timesteps held in a tensor (any dtype, rank 0 or 1) as f64 values, e.g.
/// for [`NoiseSchedule::add_noise`].
pub fn timesteps_of(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()
}

/// diffusers' beta arrays (scheduling_ddpm.py `__init__`, `betas_for_alpha_bar`).
pub fn betas(schedule: BetaSchedule, start: f64, end: f64, n: usize) -> Vec<f64> {
    let linspace = |a: f64, b: f64| -> Vec<f64> {
        match n {
            1 => vec![a],
            _ => (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect(),
        }
    };
    match schedule {
        BetaSchedule::Linear => linspace(start, end),
        BetaSchedule::ScaledLinear => linspace(start.sqrt(), end.sqrt()).into_iter().map(|b| b * b).collect(),
        BetaSchedule::SquaredcosCapV2 => {
            // Improved DDPM's cosine schedule; the divisions are float (the
            // bug candle once had here was integer division i / n).
            let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn sd() -> NoiseSchedule {
        NoiseSchedule::from_config(&SchedulerConfig::sd_turbo()).unwrap()
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    /// Hand-computed: betas 0.1, 0.2, 0.3 -> alpha_bar 0.9, 0.72, 0.504.
    #[test]
    fn hand_computed_linear_schedule() {
        let s = NoiseSchedule::from_config(&SchedulerConfig {
            num_train_timesteps: 3,
            beta_start: 0.1,
            beta_end: 0.3,
            beta_schedule: BetaSchedule::Linear,
            ..SchedulerConfig::defaults_for("DDIMScheduler")
        })
        .unwrap();
        for (got, want) in s.alphas_cumprod().iter().zip([0.9, 0.72, 0.504]) {
            assert!(close(*got, want, 1e-14), "{got} vs {want}");
        }
        assert!(close(s.sigma(1.0), (0.28f64 / 0.72).sqrt(), 1e-14));
        // halfway between sigma(1) and sigma(2), and ab from that sigma
        let mid = 0.5 * ((0.28f64 / 0.72).sqrt() + (0.496f64 / 0.504).sqrt());
        assert!(close(s.sigma(1.5), mid, 1e-14));
        assert!(close(s.alpha_bar(1.5), 1.0 / (1.0 + mid * mid), 1e-14));
        // clamped like np.interp
        assert_eq!(s.sigma(-3.0), s.sigma(0.0));
        assert_eq!(s.sigma(7.0), s.sigma(2.0));
        // scaled_linear: sqrt-space linspace, betas 0.01, 0.04, 0.09 for (0.01, 0.09)
        let b = betas(BetaSchedule::ScaledLinear, 0.01, 0.09, 3);
        assert!(b.iter().zip([0.01, 0.04, 0.09]).all(|(g, w)| close(*g, w, 1e-14)));
    }

    // Reference values (/tmp/mathref/ref.py):
    //   ab64 = np.cumprod(1 - np.linspace(b0**0.5, b1**0.5, 1000)**2)   # f64 replica
    //   ab32 = DDPMScheduler(num_train_timesteps=1000, beta_start=b0, beta_end=b1,
    //                        beta_schedule=kind).alphas_cumprod          # diffusers f32
    //   sigma = sqrt((1 - ab64) / ab64); np.interp(t, np.arange(1000), sigma)
    const TS: [f64; 6] = [0.0, 1.0, 249.0, 499.0, 749.0, 999.0];
    const SD_AB64: [f64; 6] = [
        0.99915,
        0.9982960278384514,
        0.6754324137251241,
        0.27766965045646763,
        0.056623491598269717,
        0.004660098513077238,
    ];
    const SD_AB32: [f64; 6] = [
        0.9991499781608582,
        0.9982960224151611,
        0.6754320859909058,
        0.27766942977905273,
        0.05662344768643379,
        0.00466009508818388,
    ];
    const SD_SIGMA: [f64; 6] = [
        0.029167158151720367,
        0.04131441199678309,
        0.6932048996386885,
        1.612886194303876,
        4.081729363724308,
        14.614641229333639,
    ];

    #[test]
    fn sd_scaled_linear_matches_diffusers() {
        let s = sd();
        assert_eq!(s.num_train_timesteps(), 1000);
        for i in 0..TS.len() {
            assert!(close(s.alpha_bar(TS[i]), SD_AB64[i], 1e-12), "t={}", TS[i]);
            assert!(close(s.alpha_bar(TS[i]), SD_AB32[i], 2e-6), "t={} vs diffusers", TS[i]);
            assert!(close(s.sigma(TS[i]), SD_SIGMA[i], 1e-12), "sigma t={}", TS[i]);
        }
        for (t, want) in [(500.5, 1.62098545376724), (12.25, 0.10825084727651789), (998.9, 14.605804675335246)] {
            assert!(close(s.sigma(t), want, 1e-12), "sigma({t})");
        }
    }

    #[test]
    #[rustfmt::skip] // one reference array per line
    fn linear_and_cosine_match_diffusers() {
        // (kind, f64 replica at TS, diffusers f32 at TS, sigma interp at 500.5)
        let cases = [
            (
                BetaSchedule::Linear,
                [0.9999, 0.9997800920720721, 0.5240853738253606, 0.07858724288177824, 0.0033505504389367744, 4.035829765375676e-05],
                [0.9998999834060669, 0.9997800588607788, 0.5240853428840637, 0.07858723402023315, 0.003350550541654229, 4.035830352222547e-05],
                3.452444911947177,
            ),
            (
                BetaSchedule::SquaredcosCapV2,
                [0.999958715775178, 0.9999125759273678, 0.847012161326905, 0.4938435904406382, 0.14427210238573596, 2.4287669070348567e-09],
                [0.9999586939811707, 0.9999125599861145, 0.8470122218132019, 0.4938434660434723, 0.1442721039056778, 2.4287349909002387e-09],
                1.017136054221024,
            ),
        ];
        for (kind, ab64, ab32, sigma_mid) in cases {
            let s = NoiseSchedule::from_betas(&betas(kind, 0.0001, 0.02, 1000)).unwrap();
            for i in 0..TS.len() {
                assert!(close(s.alpha_bar(TS[i]), ab64[i], 1e-12), "{kind:?} t={}", TS[i]);
                assert!(close(s.alpha_bar(TS[i]), ab32[i], 2e-5), "{kind:?} t={} vs diffusers", TS[i]);
            }
            assert!(close(s.sigma(500.5), sigma_mid, 1e-12), "{kind:?}");
        }
    }

    // DDPMScheduler(**SD).add_noise(X, NOISE, torch.tensor([999, 249])) with the
    // 2x1x2x2 X / NOISE patterns of samplers::testdata.
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn add_noise_per_sample_matches_diffusers() {
        use crate::diffusion::samplers::testdata::{assert_close, inputs};
        let dev = Device::Cpu;
        let (x, _, eps) = inputs();
        let got = sd().add_noise(&x, &eps, &[999.0, 249.0]).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let want = [
            0.7578080892562866,
            1.5722496509552002,
            0.19761726260185242,
            -1.3318525552749634,
            -0.4022495448589325,
            -0.4442705512046814,
            -0.8357974290847778,
            -1.6011019945144653,
        ];
        assert_close(&got, &want, 1e-5);
        // one timestep broadcasts over the batch
        let one = sd().add_noise(&x, &eps, &[249.0]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((one[4] - want[4] as f32).abs() < 1e-5);
        assert!(sd().add_noise(&x, &eps, &[1.0, 2.0, 3.0]).is_err());
        assert!(sd().add_noise(&x, &eps, &[]).is_err());
        let t = Tensor::new(&[999i64, 249], &dev).unwrap();
        assert_eq!(timesteps_of(&t).unwrap(), vec![999.0, 249.0]);
    }

    #[test]
    fn invalid_schedules_are_rejected() {
        assert!(matches!(NoiseSchedule::from_betas(&[]), Err(ScheduleError::InvalidSchedule(_))));
        assert!(matches!(NoiseSchedule::from_betas(&[0.1, 1.0]), Err(ScheduleError::InvalidSchedule(_))));
        assert!(matches!(NoiseSchedule::from_betas(&[0.0, 0.1]), Err(ScheduleError::InvalidSchedule(_))));
        assert!(matches!(NoiseSchedule::from_betas(&[f64::NAN]), Err(ScheduleError::InvalidSchedule(_))));
        let zero_snr = SchedulerConfig { rescale_betas_zero_snr: true, ..SchedulerConfig::sd_turbo() };
        assert!(matches!(NoiseSchedule::from_config(&zero_snr), Err(ScheduleError::Unsupported(_))));
        let short = SchedulerConfig { trained_betas: Some(vec![0.1, 0.2]), ..SchedulerConfig::sd_turbo() };
        assert!(matches!(NoiseSchedule::from_config(&short), Err(ScheduleError::InvalidSchedule(_))));
    }
}
