//! DMD2's few-step sampler: predict x0, then re-noise it to the next timestep
//! with fresh noise (pso.md section 3b). With timestep t' after t:
//!   x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)
//!   mean = sqrt(ab_t') x0_hat,  std = sqrt(1 - ab_t')
//! and the last step returns x0_hat (deterministic). This equals
//! LCMScheduler with its boundary scalings at c_skip = 0, c_out = 1, which
//! DMD2's diffusers recipe approximates with timesteps [999, 749, 499, 249].
//! Samples are variance preserving: the network sees x as is, x_T ~ N(0, I).

use candle_core::{Result, Tensor};

use super::{renoise_std, Sampler, Transition};
use crate::diffusion::config::{SchedulerConfig, TimestepSpacing};
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::NoiseSchedule;
use crate::diffusion::timesteps::{require_integers, spaced, validate, Timesteps};
use crate::diffusion::ScheduleError;

#[derive(Debug, Clone)]
pub struct Dmd2 {
    timesteps: Vec<f64>,
    alpha_bars: Vec<f64>,
    prediction: Prediction,
}

impl Dmd2 {
    /// `Steps(n)` always uses trailing spacing, whatever the config says:
    /// DMD2 was distilled on 999/749/499/249 (4 steps) and its 8-step PSO
    /// chain is 999/874/.../124, both trailing. SDXL base configs say
    /// "leading" (751/501/251/1), which would be wrong here. Explicit
    /// timesteps (e.g. the 1-step model's [399]) must be integers.
    pub fn new(config: &SchedulerConfig, timesteps: &Timesteps) -> std::result::Result<Self, ScheduleError> {
        let schedule = NoiseSchedule::from_config(config)?;
        let n_train = schedule.num_train_timesteps();
        let timesteps = match timesteps {
            Timesteps::Steps(n) => spaced(TimestepSpacing::Trailing, *n, n_train, 0)?,
            Timesteps::Explicit(ts) => {
                validate(ts, n_train)?;
                require_integers(ts)?;
                ts.clone()
            }
        };
        let alpha_bars = timesteps.iter().map(|t| schedule.alpha_bar(*t)).collect();
        Ok(Self { timesteps, alpha_bars, prediction: config.prediction_type })
    }
}

impl Sampler for Dmd2 {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn std(&self, i: usize) -> f64 {
        renoise_std(&self.alpha_bars, i)
    }

    fn transition(&self, i: usize, x: &Tensor, model_out: &Tensor) -> Result<Transition> {
        let Some(&ab) = self.alpha_bars.get(i) else {
            candle_core::bail!("step {i} of a {}-step DMD2 chain", self.alpha_bars.len());
        };
        let (_, x0) = self.prediction.eps_x0(x, model_out, &[ab])?;
        let mean = match self.alpha_bars.get(i + 1) {
            Some(ab_next) => x0.affine(ab_next.sqrt(), 0.0)?,
            None => x0.clone(),
        };
        Ok(Transition { mean, std: self.std(i), x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::samplers::testdata::{assert_close, close, inputs};

    fn dmd2(ts: &Timesteps) -> Dmd2 {
        Dmd2::new(&SchedulerConfig::sd_turbo(), ts).unwrap()
    }

    // numpy replica of pso.md 3b on diffusers' f32 alphas_cumprod:
    //   ab = DDPMScheduler(**SD).alphas_cumprod.numpy().astype(np.float64)
    //   x0 = (X - sqrt(1 - ab[t]) * OUT) / sqrt(ab[t])
    //   prev = sqrt(ab[tn]) * x0 + sqrt(1 - ab[tn]) * NOISE
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn steps_match_reference() {
        let (x, out, noise) = inputs();
        let s = dmd2(&Timesteps::Steps(4));
        assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
        assert_eq!(s.init_noise_sigma(), 1.0);

        let o = s.step(0, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 0.9712757344408262, 1e-6));
        assert_close(&o.prev, &[-0.6496110497345136, 3.91564485291781, 4.314185667003312, 1.9020605079178332, -0.4108727638624021, -1.7049874287091393, -2.7144350213031814, -2.99902617287722], 1e-5);
        assert_close(&o.x0, &[-5.6652827169421585, 10.492798690306014, 17.875538316095298, 13.81957663276783, 1.6449558763767547, -11.18757657635965, -16.93089308649099, -11.535904420548995], 1e-5);

        let o = s.step(2, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 0.5697086220245348, 1e-6));
        assert_close(&o.prev, &[0.032391423434221134, 2.1726743887656523, 2.114997422099871, 0.7522979648739427, -0.3021876695948528, -0.7359573785015902, -1.2162920139962587, -1.6034397830227012], 1e-5);

        // last step: deterministic, returns x0
        assert!(!s.needs_noise(3));
        let o = s.step(3, &x, &out, None).unwrap();
        assert_eq!(o.std, 0.0);
        let x0 = o.x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(o.prev.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x0);
        assert!(s.step(4, &x, &out, None).is_err());
    }

    #[test]
    fn eight_step_chain_and_explicit_timesteps() {
        let s = dmd2(&Timesteps::Steps(8));
        assert_eq!(s.timesteps(), &[999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0]);
        assert_eq!((0..8).filter(|i| s.needs_noise(*i)).count(), 7);
        let one = dmd2(&Timesteps::Explicit(vec![399.0]));
        assert!(!one.needs_noise(0));
        let cfg = SchedulerConfig::sd_turbo();
        assert!(matches!(
            Dmd2::new(&cfg, &Timesteps::Explicit(vec![999.0, 749.5])),
            Err(ScheduleError::NotInteger { index: 1, .. })
        ));
        assert!(matches!(Dmd2::new(&cfg, &Timesteps::Explicit(vec![])), Err(ScheduleError::EmptyTimesteps)));
    }
}
