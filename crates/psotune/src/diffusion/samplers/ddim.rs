//! DDIM, as diffusers' DDIMScheduler (scheduling_ddim.py), for multi-step
//! teachers. From timestep t to its predecessor t_prev:
//!   var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev),  std = eta sqrt(var)
//!   mean = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - std^2) eps_hat
//! eta = 0 is deterministic. Past the end, ab_prev is 1 (`set_alpha_to_one`)
//! or alpha_bar(0). Variance preserving: init sigma 1, no input scaling.

use candle_core::{Result, Tensor};

use super::{Sampler, Transition};
use crate::diffusion::config::{SchedulerConfig, TimestepSpacing};
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::NoiseSchedule;
use crate::diffusion::timesteps::{require_integers, spaced, validate, Timesteps};
use crate::diffusion::ScheduleError;

#[derive(Debug, Clone)]
pub struct Ddim {
    timesteps: Vec<f64>,
    alpha_bars: Vec<f64>,
    /// alpha_bar at each step's target timestep.
    alpha_bars_prev: Vec<f64>,
    stds: Vec<f64>,
    prediction: Prediction,
    clip: Option<f64>,
}

impl Ddim {
    /// `Steps(n)` follows the config's spacing (integer timesteps; linspace
    /// rounded half-to-even) and, like diffusers, steps each timestep t to
    /// t - T // n, which is the next timestep for leading and trailing
    /// spacing but not always for linspace. `Explicit` steps to the next
    /// listed timestep, and past the end after the last.
    pub fn new(config: &SchedulerConfig, timesteps: &Timesteps, eta: f64) -> std::result::Result<Self, ScheduleError> {
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(ScheduleError::InvalidSchedule(format!("DDIM eta must be finite and >= 0, got {eta}")));
        }
        let schedule = NoiseSchedule::from_config(config)?;
        let n_train = schedule.num_train_timesteps();
        let (timesteps, prev): (Vec<f64>, Vec<f64>) = match timesteps {
            Timesteps::Steps(n) => {
                let mut ts = spaced(config.timestep_spacing, *n, n_train, config.steps_offset)?;
                if config.timestep_spacing == TimestepSpacing::Linspace {
                    ts.iter_mut().for_each(|t| *t = t.round_ties_even());
                }
                let jump = (n_train / n) as f64;
                let prev = ts.iter().map(|t| t - jump).collect();
                (ts, prev)
            }
            Timesteps::Explicit(ts) => {
                validate(ts, n_train)?;
                require_integers(ts)?;
                let prev = ts.iter().skip(1).copied().chain([-1.0]).collect();
                (ts.clone(), prev)
            }
        };
        let final_alpha_bar = if config.set_alpha_to_one { 1.0 } else { schedule.alpha_bar(0.0) };
        let alpha_bars: Vec<f64> = timesteps.iter().map(|t| schedule.alpha_bar(*t)).collect();
        let alpha_bars_prev: Vec<f64> =
            prev.iter().map(|p| if *p >= 0.0 { schedule.alpha_bar(*p) } else { final_alpha_bar }).collect();
        let stds = alpha_bars
            .iter()
            .zip(&alpha_bars_prev)
            .map(|(ab, abp)| eta * ((1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)).max(0.0).sqrt())
            .collect();
        Ok(Self {
            timesteps,
            alpha_bars,
            alpha_bars_prev,
            stds,
            prediction: config.prediction_type,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        })
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn std(&self, i: usize) -> f64 {
        self.stds.get(i).copied().unwrap_or(0.0)
    }

    fn transition(&self, i: usize, x: &Tensor, model_out: &Tensor) -> Result<Transition> {
        let (Some(&ab), Some(&ab_prev)) = (self.alpha_bars.get(i), self.alpha_bars_prev.get(i)) else {
            candle_core::bail!("step {i} of a {}-step DDIM chain", self.timesteps.len());
        };
        let (eps, mut x0) = self.prediction.eps_x0(x, model_out, &[ab])?;
        // diffusers clips x0 but keeps eps (use_clipped_model_output = False)
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r)?;
        }
        let std = self.stds[i];
        let direction = (1.0 - ab_prev - std * std).max(0.0).sqrt();
        let mean = (x0.affine(ab_prev.sqrt(), 0.0)? + eps.affine(direction, 0.0)?)?;
        Ok(Transition { mean, std, x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::config::BetaSchedule;
    use crate::diffusion::samplers::testdata::{assert_close, close, inputs};

    fn config(spacing: TimestepSpacing, offset: usize, pred: Prediction, one: bool) -> SchedulerConfig {
        let c = SchedulerConfig::defaults_for("DDIMScheduler");
        assert!(c.clip_sample, "DDIMScheduler clips by default");
        SchedulerConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: spacing,
            steps_offset: offset,
            prediction_type: pred,
            set_alpha_to_one: one,
            clip_sample: false,
            ..c
        }
    }

    // s = DDIMScheduler(**SD, timestep_spacing=..., prediction_type=..., steps_offset=...,
    //                   clip_sample=False, set_alpha_to_one=one); s.set_timesteps(n)
    // o = s.step(OUT, s.timesteps[i], X, eta=eta, variance_noise=NOISE if eta > 0 else None)
    // std = eta * s._get_variance(t, t - 1000 // n) ** 0.5
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn deterministic_steps_match_diffusers() {
        let (x, out, _) = inputs();
        let s = Ddim::new(&config(TimestepSpacing::Leading, 1, Prediction::Epsilon, true), &Timesteps::Steps(4), 0.0).unwrap();
        assert_eq!(s.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        assert!((0..4).all(|i| !s.needs_noise(i)));
        let o = s.step(0, &x, &out, None).unwrap();
        assert_close(&o.prev, &[0.031768798828125, 2.4721081256866455, 3.406235456466675, 2.467172145843506, 0.22292402386665344, -2.1158154010772705, -3.2959742546081543, -2.6419289112091064], 1e-5);
        assert_close(&o.x0, &[-1.530746340751648, 3.140918731689453, 5.2535810470581055, 4.041464328765869, 0.4725113809108734, -3.286069631576538, -4.984378337860107, -3.443988084793091], 1e-5);
        // last step with set_alpha_to_one: prev = x0
        let x0_last = [0.5510537028312683, 1.6443474292755127, 1.9534225463867188, 1.3352024555206299, 0.08443862944841385, -1.205710768699646, -1.9236292839050293, -1.727858066558838];
        assert_close(&s.step(3, &x, &out, None).unwrap().prev, &x0_last, 1e-5);
        // set_alpha_to_one = False: the final target is alpha_bar(0)
        let s = Ddim::new(&config(TimestepSpacing::Leading, 1, Prediction::Epsilon, false), &Timesteps::Steps(4), 0.0).unwrap();
        let o = s.step(3, &x, &out, None).unwrap();
        assert_close(&o.prev, &[0.5793934464454651, 1.6718971729278564, 1.974891185760498, 1.3465443849563599, 0.08355141431093216, -1.2186408042907715, -1.9461688995361328, -1.7557451725006104], 1e-5);
        assert_close(&o.x0, &x0_last, 1e-5);
    }

    #[test]
    #[rustfmt::skip] // one reference array per line
    fn stochastic_and_other_predictions_match_diffusers() {
        let (x, out, noise) = inputs();
        let cfg = config(TimestepSpacing::Trailing, 0, Prediction::Epsilon, true);
        let s = Ddim::new(&cfg, &Timesteps::Steps(4), 0.5).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
        assert!(close(s.std(1), 0.3903666977404165, 1e-6));
        assert!(s.needs_noise(1) && !s.needs_noise(3), "the last step lands on alpha_bar = 1: variance 0");
        let o = s.step(1, &x, &out, Some(&noise)).unwrap();
        assert_close(&o.prev, &[0.2214871346950531, 2.9445273876190186, 3.3486928939819336, 1.8641431331634521, -0.09753789007663727, -1.681550145149231, -2.6828041076660156, -2.644456386566162], 1e-5);

        let v = SchedulerConfig { prediction_type: Prediction::VPrediction, ..cfg.clone() };
        let o = Ddim::new(&v, &Timesteps::Steps(4), 0.0).unwrap().step(1, &x, &out, None).unwrap();
        assert_close(&o.prev, &[0.2586098611354828, 1.3003273010253906, 1.6491327285766602, 1.1581108570098877, 0.08811545372009277, -1.020870327949524, -1.6110142469406128, -1.3762106895446777], 1e-5);
        assert_close(&o.x0, &[-0.8112727403640747, -0.54061359167099, -0.2709258198738098, -0.07529175281524658, 0.04814958944916725, 0.15663716197013855, 0.31291139125823975, 0.5330553650856018], 1e-5);

        let smp = SchedulerConfig { prediction_type: Prediction::Sample, ..cfg };
        let o = Ddim::new(&smp, &Timesteps::Steps(4), 0.0).unwrap().step(1, &x, &out, None).unwrap();
        assert_close(&o.prev, &[0.8295508623123169, 1.7814478874206543, 1.9792557954788208, 1.3123023509979248, 0.0634625181555748, -1.2177488803863525, -1.9660892486572266, -1.8589987754821777], 1e-5);
    }

    #[test]
    fn spacing_jumps_and_errors() {
        // DDIMScheduler linspace 3 -> [999, 500, 0]; diffusers then steps 999 -> 666
        let cfg = config(TimestepSpacing::Linspace, 0, Prediction::Epsilon, true);
        let s = Ddim::new(&cfg, &Timesteps::Steps(3), 0.0).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 500.0, 0.0]);
        let ab = NoiseSchedule::from_config(&cfg).unwrap();
        assert_eq!(s.alpha_bars_prev[0], ab.alpha_bar(666.0));
        // explicit timesteps step to the next listed one
        let s = Ddim::new(&cfg, &Timesteps::Explicit(vec![999.0, 500.0, 0.0]), 0.0).unwrap();
        assert_eq!(s.alpha_bars_prev, vec![ab.alpha_bar(500.0), ab.alpha_bar(0.0), 1.0]);
        assert!(matches!(Ddim::new(&cfg, &Timesteps::Steps(4), -1.0), Err(ScheduleError::InvalidSchedule(_))));
        assert_eq!(Ddim::new(&cfg, &Timesteps::Steps(0), 0.0).unwrap_err(), ScheduleError::ZeroSteps);
        assert!(Ddim::new(&cfg, &Timesteps::Explicit(vec![10.5]), 0.0).is_err());
    }
}
