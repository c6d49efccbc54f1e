//! Samplers of the distilled models and their teachers, written so that every
//! stochastic transition x_{n-1} ~ N(mean, std^2 I) is visible: PSO's online
//! objective needs log p(x_{n-1} | x_n) under the tuned and the frozen model
//! (pso.md section 3b). Noise is always passed in, never drawn here.
//!
//! A sampler is stateless per step (unlike diffusers' `_step_index`): step i
//! can be recomputed for any x, which is what re-scoring a stored trajectory
//! under another network needs. Classifier-free guidance is the pipeline's
//! job; converting the prediction type is the sampler's.

mod ddim;
mod dmd2;
mod euler_ancestral;
mod lcm;
#[cfg(test)]
pub(crate) mod testdata;

pub use ddim::Ddim;
pub use dmd2::Dmd2;
pub use euler_ancestral::EulerAncestral;
pub use lcm::Lcm;

use candle_core::{Result, Tensor};

use super::config::SchedulerConfig;
use super::timesteps::Timesteps;
use super::ScheduleError;

/// The Gaussian transition of one step: x_{n-1} = mean + std * z.
#[derive(Debug, Clone)]
pub struct Transition {
    pub mean: Tensor,
    /// 0 when the step is deterministic.
    pub std: f64,
    /// The sampler's estimate of the clean sample at this step.
    pub x0: Tensor,
}

#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The next sample x_{n-1} (the final sample after the last step).
    pub prev: Tensor,
    pub x0: Tensor,
    pub mean: Tensor,
    /// 0 if deterministic.
    pub std: f64,
}

pub trait Sampler: Send + Sync {
    /// Model timesteps, first (noisiest) to last.
    fn timesteps(&self) -> &[f64];

    /// Scale of the initial noise, diffusers' `scheduler.init_noise_sigma`
    /// (1 for the variance-preserving samplers; Euler works in sigma space).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The network input for sample x at step i (`scale_model_input`):
    /// unchanged except in sigma space.
    fn scale_model_input(&self, x: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(x.clone())
    }

    /// Standard deviation of step i's transition; 0 when deterministic.
    fn std(&self, i: usize) -> f64;

    /// The Gaussian transition of step i from sample x and the network's
    /// (guided) output; differentiable in `model_out`.
    fn transition(&self, i: usize, x: &Tensor, model_out: &Tensor) -> Result<Transition>;

    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// Whether step i draws fresh noise.
    fn needs_noise(&self, i: usize) -> bool {
        self.std(i) > 0.0
    }

    /// One sampling step. `noise` (standard normal, x's shape) is required
    /// when `needs_noise(i)` and ignored otherwise.
    fn step(&self, i: usize, x: &Tensor, model_out: &Tensor, noise: Option<&Tensor>) -> Result<StepOutput> {
        let Transition { mean, std, x0 } = self.transition(i, x, model_out)?;
        let prev = match (std > 0.0, noise) {
            (false, _) => mean.clone(),
            (true, Some(z)) => (&mean + z.affine(std, 0.0)?)?,
            (true, None) => candle_core::bail!("sampler step {i} draws noise (std {std}) but none was given"),
        };
        Ok(StepOutput { prev, x0, mean, std })
    }
}

/// Standard deviation of a denoise-then-re-noise step (DMD2, LCM): fresh
/// noise at the next timestep's level, sqrt(1 - alpha_bar_next); the last
/// step returns the clean estimate and is deterministic.
pub(crate) fn renoise_std(alpha_bars: &[f64], i: usize) -> f64 {
    alpha_bars.get(i + 1).map_or(0.0, |ab_next| (1.0 - ab_next).sqrt())
}

/// log N(x; mean, std^2 I) per sample (dim 0), averaged over the other dims,
/// without the constant -log(std) - log(2 pi)/2: it does not depend on the
/// network and cancels in PSO's theta/pre ratios (pso.md section 3b).
pub fn gaussian_log_prob(x: &Tensor, mean: &Tensor, std: f64) -> Result<Tensor> {
    if !(std > 0.0 && std.is_finite()) {
        candle_core::bail!("gaussian_log_prob: std must be positive and finite, got {std} (deterministic step?)");
    }
    if x.rank() < 2 {
        candle_core::bail!("gaussian_log_prob: expected a batch [b, ...], got shape {:?}", x.dims());
    }
    (x - mean)?.sqr()?.flatten_from(1)?.mean(1)?.affine(-0.5 / (std * std), 0.0)
}

/// Which sampler to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// SD-Turbo / SDXL-Turbo (EulerAncestralDiscreteScheduler).
    EulerAncestral,
    /// DMD2: predict x0, re-noise to the next timestep with fresh noise.
    Dmd2,
    /// Latent consistency models (LCMScheduler).
    Lcm,
    /// DDIM teachers; eta = 0 is deterministic.
    Ddim { eta: f64 },
}

impl SamplerKind {
    /// The sampler for a diffusers scheduler class, if we implement it.
    pub fn from_class_name(name: &str) -> Option<Self> {
        match name {
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestral),
            "LCMScheduler" => Some(Self::Lcm),
            "DDIMScheduler" => Some(Self::Ddim { eta: 0.0 }),
            _ => None,
        }
    }
}

/// Build a sampler from a scheduler config and a timestep request.
pub fn build_sampler(
    kind: SamplerKind,
    config: &SchedulerConfig,
    timesteps: &Timesteps,
) -> std::result::Result<Box<dyn Sampler>, ScheduleError> {
    Ok(match kind {
        SamplerKind::EulerAncestral => Box::new(EulerAncestral::new(config, timesteps)?),
        SamplerKind::Dmd2 => Box::new(Dmd2::new(config, timesteps)?),
        SamplerKind::Lcm => Box::new(Lcm::new(config, timesteps)?),
        SamplerKind::Ddim { eta } => Box::new(Ddim::new(config, timesteps, eta)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Hand-computed: x - mean = [[1, 2], [0, -3]], std 0.5 ->
    /// -(1 + 4) / 2 / (2 * 0.25) = -5, -(0 + 9) / 2 / 0.5 = -9.
    #[test]
    fn log_prob_by_hand() {
        let dev = Device::Cpu;
        let mean = Tensor::new(&[[0.5f64, -1.0], [2.0, 3.0]], &dev).unwrap();
        let x = Tensor::new(&[[1.5f64, 1.0], [2.0, 0.0]], &dev).unwrap();
        let lp = gaussian_log_prob(&x, &mean, 0.5).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(lp, vec![-5.0, -9.0]);
        // equals the full density up to the dropped constant, per dimension
        let full = |d: f64| -d * d / (2.0 * 0.25) - 0.5f64.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        let want = (full(1.0) + full(2.0)) / 2.0 + 0.5f64.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln();
        assert!((lp[0] - want).abs() < 1e-12);
        assert!(gaussian_log_prob(&x, &mean, 0.0).is_err());
        assert!(gaussian_log_prob(&x, &mean, f64::NAN).is_err());
        assert!(gaussian_log_prob(&x.flatten_all().unwrap(), &mean.flatten_all().unwrap(), 1.0).is_err());
    }

    /// PSO trains through log p(prev | x) = gaussian_log_prob(prev, mean(x,
    /// model_out), std): its gradient w.r.t. the network output must flow
    /// through every sampler's transition.
    #[test]
    fn log_prob_gradients_flow_through_every_transition() {
        use crate::diffusion::Prediction;
        use crate::ops::gradcheck::{check, det_tensor};
        let x = det_tensor(&[2, 1, 2, 2], 1);
        let out = det_tensor(&[2, 1, 2, 2], 2);
        let prev = det_tensor(&[2, 1, 2, 2], 3);
        let kinds = [SamplerKind::EulerAncestral, SamplerKind::Dmd2, SamplerKind::Lcm, SamplerKind::Ddim { eta: 1.0 }];
        for kind in kinds {
            for pred in [Prediction::Epsilon, Prediction::VPrediction] {
                let config = SchedulerConfig { prediction_type: pred, ..SchedulerConfig::sd_turbo() };
                let s = build_sampler(kind, &config, &Timesteps::Steps(4)).unwrap();
                assert!(s.needs_noise(1), "{kind:?}");
                let worst = check(&[x.clone(), out.clone()], |a| {
                    let tr = s.transition(1, &a[0], &a[1])?;
                    let lp = gaussian_log_prob(&prev, &tr.mean, tr.std)?;
                    (lp * Tensor::new(&[0.7f64, -1.3], &Device::Cpu)?)?.sum_all()
                })
                .unwrap();
                assert!(worst < 1e-5, "{kind:?} {pred:?}: relative gradient error {worst}");
            }
        }
    }

    /// Whole 4-step chains with a toy model (out = 0.3 * input + 0.1), to
    /// check init sigma, input scaling and step order together
    /// (/tmp/mathref/chain.py; testdata's X and NOISE):
    /// ```python
    /// s.set_timesteps(4); lat = X * s.init_noise_sigma
    /// for t in s.timesteps:   # randn_tensor patched: k-th draw is NOISE * (1 + 0.25 k)
    ///     out = 0.3 * s.scale_model_input(lat, t) + 0.1
    ///     lat = s.step(out, t, lat).prev_sample
    /// ```
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn four_step_chains_match_diffusers() {
        use super::testdata::{assert_close, inputs};
        use crate::diffusion::BetaSchedule;
        let (x, _, noise) = inputs();
        let lcm = SchedulerConfig {
            beta_start: 0.00085, beta_end: 0.012, beta_schedule: BetaSchedule::ScaledLinear,
            ..SchedulerConfig::defaults_for("LCMScheduler")
        };
        let cases = [
            (SamplerKind::EulerAncestral, SchedulerConfig::sd_turbo(),
             [5.473146438598633, 14.750884056091309, 9.621108055114746, -0.8351760506629944, -4.596100330352783, -2.7605512142181396, -4.830145835876465, -11.585298538208008]),
            (SamplerKind::Lcm, lcm,
             [5.018636226654053, 13.485280990600586, 8.055691719055176, -1.981558084487915, -4.730775356292725, -1.795289158821106, -3.2802538871765137, -10.258551597595215]),
        ];
        for (kind, config, want) in cases {
            let s = build_sampler(kind, &config, &Timesteps::Steps(4)).unwrap();
            let mut lat = x.affine(s.init_noise_sigma(), 0.0).unwrap();
            for i in 0..s.num_steps() {
                let out = s.scale_model_input(&lat, i).unwrap().affine(0.3, 0.1).unwrap();
                let z = noise.affine(1.25 + 0.25 * i as f64, 0.0).unwrap();
                lat = s.step(i, &lat, &out, Some(&z)).unwrap().prev;
            }
            assert_close(&lat, &want, 1e-5);
        }
    }

    #[test]
    fn kinds_from_diffusers_class_names() {
        assert_eq!(SamplerKind::from_class_name("LCMScheduler"), Some(SamplerKind::Lcm));
        assert_eq!(SamplerKind::from_class_name("DDIMScheduler"), Some(SamplerKind::Ddim { eta: 0.0 }));
        assert_eq!(SamplerKind::from_class_name("EulerDiscreteScheduler"), None);
        let s = build_sampler(SamplerKind::EulerAncestral, &SchedulerConfig::sd_turbo(), &Timesteps::Steps(4)).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
        assert!(build_sampler(SamplerKind::Dmd2, &SchedulerConfig::sd_turbo(), &Timesteps::Steps(0)).is_err());
    }
}
