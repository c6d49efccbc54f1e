//! Latent consistency model sampling, as diffusers' LCMScheduler
//! (scheduling_lcm.py). At timestep t with next timestep t':
//!   x0_hat from the prediction type (clamped if clip_sample),
//!   denoised = c_out(t) x0_hat + c_skip(t) x_t   (consistency boundary condition)
//!   mean = sqrt(ab_t') denoised,  std = sqrt(1 - ab_t')
//! with c_skip = 0.25 / (s^2 + 0.25), c_out = s / sqrt(s^2 + 0.25),
//! s = t * timestep_scaling (sigma_data = 0.5). The last step returns
//! `denoised` (deterministic). Variance preserving: init sigma 1, no input
//! scaling. LCM ignores timestep_spacing and steps_offset, like diffusers.

use candle_core::{Result, Tensor};

use super::{renoise_std, Sampler, Transition};
use crate::diffusion::config::SchedulerConfig;
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::NoiseSchedule;
use crate::diffusion::timesteps::{require_integers, validate, Timesteps};
use crate::diffusion::ScheduleError;

#[derive(Debug, Clone)]
pub struct Lcm {
    timesteps: Vec<f64>,
    alpha_bars: Vec<f64>,
    prediction: Prediction,
    timestep_scaling: f64,
    clip: Option<f64>,
}

impl Lcm {
    /// `Steps(n)`: n timesteps evenly spaced (by index) over the
    /// `original_inference_steps`-long distillation schedule
    /// [T/k*1 - 1, ..., T - 1], k = T // original_inference_steps, as
    /// `LCMScheduler.set_timesteps(n)` with strength 1. `Explicit`: any
    /// strictly decreasing integer timesteps (diffusers only warns when they
    /// are off the distillation schedule).
    pub fn new(config: &SchedulerConfig, timesteps: &Timesteps) -> std::result::Result<Self, ScheduleError> {
        let schedule = NoiseSchedule::from_config(config)?;
        let n_train = schedule.num_train_timesteps();
        let timesteps = match timesteps {
            Timesteps::Steps(n) => default_timesteps(*n, config.original_inference_steps, n_train)?,
            Timesteps::Explicit(ts) => {
                validate(ts, n_train)?;
                require_integers(ts)?;
                ts.clone()
            }
        };
        let alpha_bars = timesteps.iter().map(|t| schedule.alpha_bar(*t)).collect();
        Ok(Self {
            timesteps,
            alpha_bars,
            prediction: config.prediction_type,
            timestep_scaling: config.timestep_scaling,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        })
    }

    /// (c_skip, c_out) at timestep t (`get_scalings_for_boundary_condition_discrete`).
    pub fn boundary_scalings(&self, t: f64) -> (f64, f64) {
        const SIGMA_DATA_SQ: f64 = 0.25;
        let s = t * self.timestep_scaling;
        (SIGMA_DATA_SQ / (s * s + SIGMA_DATA_SQ), s / (s * s + SIGMA_DATA_SQ).sqrt())
    }
}

fn default_timesteps(n: usize, original_steps: usize, n_train: usize) -> std::result::Result<Vec<f64>, ScheduleError> {
    if n == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    if original_steps == 0 || original_steps > n_train {
        return Err(ScheduleError::InvalidSchedule(format!(
            "original_inference_steps {original_steps} must be in [1, num_train_timesteps = {n_train}]"
        )));
    }
    if n > original_steps {
        return Err(ScheduleError::TooManySteps { steps: n, max: original_steps });
    }
    let k = n_train / original_steps;
    // lcm_origin_timesteps reversed: original_steps * k - 1, ..., k - 1
    let origin: Vec<usize> = (1..=original_steps).rev().map(|j| j * k - 1).collect();
    // np.floor(np.linspace(0, len, num=n, endpoint=False))
    let step = original_steps as f64 / n as f64;
    Ok((0..n).map(|i| origin[(i as f64 * step).floor() as usize] as f64).collect())
}

impl Sampler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn std(&self, i: usize) -> f64 {
        renoise_std(&self.alpha_bars, i)
    }

    fn transition(&self, i: usize, x: &Tensor, model_out: &Tensor) -> Result<Transition> {
        let (Some(&t), Some(&ab)) = (self.timesteps.get(i), self.alpha_bars.get(i)) else {
            candle_core::bail!("step {i} of a {}-step LCM chain", self.timesteps.len());
        };
        let (_, mut x0) = self.prediction.eps_x0(x, model_out, &[ab])?;
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r)?;
        }
        let (c_skip, c_out) = self.boundary_scalings(t);
        let denoised = (x0.affine(c_out, 0.0)? + x.affine(c_skip, 0.0)?)?;
        let mean = match self.alpha_bars.get(i + 1) {
            Some(ab_next) => denoised.affine(ab_next.sqrt(), 0.0)?,
            None => denoised.clone(),
        };
        Ok(Transition { mean, std: self.std(i), x0: denoised })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::config::BetaSchedule;
    use crate::diffusion::samplers::testdata::{assert_close, close, inputs};

    fn config(pred: Prediction, original_steps: usize) -> SchedulerConfig {
        let c = SchedulerConfig::defaults_for("LCMScheduler");
        assert_eq!((c.beta_schedule, c.beta_start, c.beta_end), (BetaSchedule::ScaledLinear, 0.00085, 0.012));
        SchedulerConfig { prediction_type: pred, original_inference_steps: original_steps, ..c }
    }
    fn lcm(pred: Prediction, ts: Timesteps) -> Lcm {
        Lcm::new(&config(pred, 50), &ts).unwrap()
    }

    // s = LCMScheduler(**SD, original_inference_steps=o); s.set_timesteps(n); s.timesteps
    #[test]
    fn default_timesteps_match_diffusers() {
        let cases: [(usize, usize, &[f64]); 5] = [
            (50, 1, &[999.0]),
            (50, 2, &[999.0, 499.0]),
            (50, 4, &[999.0, 759.0, 499.0, 259.0]),
            (50, 8, &[999.0, 879.0, 759.0, 639.0, 499.0, 379.0, 259.0, 139.0]),
            (100, 4, &[999.0, 749.0, 499.0, 249.0]),
        ];
        for (orig, n, want) in cases {
            let s = Lcm::new(&config(Prediction::Epsilon, orig), &Timesteps::Steps(n)).unwrap();
            assert_eq!(s.timesteps(), want, "orig {orig} n {n}");
        }
    }

    // for i in idxs: s._step_index = i; o = s.step(OUT, s.timesteps[i], X)
    //   print(s.get_scalings_for_boundary_condition_discrete(t), o.prev_sample, o.denoised)
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn steps_match_diffusers() {
        let (x, out, noise) = inputs();
        let s = lcm(Prediction::Epsilon, Timesteps::Steps(4));
        let (c_skip, c_out) = s.boundary_scalings(999.0);
        assert!(close(c_skip, 2.5050075037374525e-09, 1e-12) && close(c_out, 0.9999999987474963, 1e-12));
        let o = s.step(0, &x, &out, Some(&noise)).unwrap();
        assert_close(&o.prev, &[-0.594412624835968, 3.8197438716888428, 4.145306587219238, 1.7681536674499512, -0.42829981446266174, -1.5969696044921875, -2.5512781143188477, -2.89054274559021], 1e-5);
        assert_close(&o.x0, &[-5.665283203125, 10.492798805236816, 17.875537872314453, 13.81957721710205, 1.6449558734893799, -11.187577247619629, -16.93089485168457, -11.535904884338379], 1e-5);
        // last step (t = 259): deterministic, prev = denoised
        let want = [0.02304556965827942, 1.3761521577835083, 1.8929952383041382, 1.3703100681304932, 0.12344962358474731, -1.1757742166519165, -1.8320565223693848, -1.470388650894165];
        assert!(!s.needs_noise(3));
        let o = s.step(3, &x, &out, None).unwrap();
        assert_close(&o.prev, &want, 1e-5);
        assert_close(&o.x0, &want, 1e-5);

        // custom timesteps [999, 749, 499, 249], i = 1
        let s = lcm(Prediction::Epsilon, Timesteps::Explicit(vec![999.0, 749.0, 499.0, 249.0]));
        let o = s.step(1, &x, &out, Some(&noise)).unwrap();
        assert_close(&o.prev, &[-0.1879425048828125, 2.884324073791504, 2.7999393939971924, 0.8998171091079712, -0.45508161187171936, -0.8806036710739136, -1.4561161994934082, -2.0234873294830322], 1e-5);
        assert_close(&o.x0, &[-1.5165542364120483, 3.1176278591156006, 5.212950229644775, 4.0098557472229, 0.46866530179977417, -3.2606215476989746, -4.945977210998535, -3.4182918071746826], 1e-5);
    }

    #[test]
    #[rustfmt::skip] // one reference array per line
    fn v_and_sample_prediction_match_diffusers() {
        let (x, out, noise) = inputs();
        let o = lcm(Prediction::VPrediction, Timesteps::Steps(2)).step(0, &x, &out, Some(&noise)).unwrap();
        assert_close(&o.prev, &[0.11722168326377869, 0.7926774024963379, -0.27773553133010864, -1.3793028593063354, -0.6836996674537659, 1.035933017730713, 1.500980019569397, 0.23029549419879913], 1e-5);
        assert_close(&o.x0, &[-0.9374330043792725, -0.8517663478851318, -0.6276662349700928, -0.3153136968612671, 0.03480840474367142, 0.37646031379699707, 0.6658127903938293, 0.8587942719459534], 1e-5);
        let o = lcm(Prediction::Sample, Timesteps::Steps(2)).step(0, &x, &out, Some(&noise)).unwrap();
        assert_close(&o.prev, &[1.1276357173919678, 1.7520723342895508, 0.4560377597808838, -0.9979006052017212, -0.7174282670021057, 0.5946004390716553, 0.72797691822052, -0.7395421862602234], 1e-5);
    }

    #[test]
    fn clip_sample_clamps_x0_before_the_boundary_mix() {
        let (x, out, _) = inputs();
        let cfg = SchedulerConfig { clip_sample: true, clip_sample_range: 1.5, ..config(Prediction::Epsilon, 50) };
        let s = Lcm::new(&cfg, &Timesteps::Steps(1)).unwrap();
        let v = s.step(0, &x, &out, None).unwrap().prev.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|v| v.abs() <= 1.5 + 1e-6), "{v:?}");
    }

    #[test]
    fn impossible_requests() {
        let cfg = config(Prediction::Epsilon, 50);
        assert_eq!(Lcm::new(&cfg, &Timesteps::Steps(0)).unwrap_err(), ScheduleError::ZeroSteps);
        assert_eq!(
            Lcm::new(&cfg, &Timesteps::Steps(51)).unwrap_err(),
            ScheduleError::TooManySteps { steps: 51, max: 50 }
        );
        let bad = config(Prediction::Epsilon, 2000);
        assert!(matches!(Lcm::new(&bad, &Timesteps::Steps(4)), Err(ScheduleError::InvalidSchedule(_))));
        assert!(matches!(
            Lcm::new(&cfg, &Timesteps::Explicit(vec![999.0, 999.0])),
            Err(ScheduleError::NotDecreasing { .. })
        ));
    }
}
