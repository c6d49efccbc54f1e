//! Euler-ancestral sampling, as diffusers' EulerAncestralDiscreteScheduler
//! (scheduling_euler_ancestral_discrete.py): the sampler of SD-Turbo and
//! SDXL-Turbo (trailing spacing: 1 step t=999, 4 steps 999/749/499/249).
//!
//! The sample lives in sigma space, x = x_vp * sqrt(1 + sigma^2); the network
//! sees x / sqrt(sigma^2 + 1). Step i goes from sigma_i to sigma_{i+1}
//! (0 after the last step):
//!   sigma_up = sqrt(sigma_to^2 (sigma^2 - sigma_to^2) / sigma^2)
//!   sigma_down = sqrt(sigma_to^2 - sigma_up^2)
//!   mean = x + (x - x0_hat) / sigma * (sigma_down - sigma),  std = sigma_up
//! so the last step (sigma_to = 0) is deterministic and returns x0_hat.

use candle_core::{Result, Tensor};

use super::{Sampler, Transition};
use crate::diffusion::config::{SchedulerConfig, TimestepSpacing};
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::NoiseSchedule;
use crate::diffusion::timesteps::{spaced, validate, Timesteps};
use crate::diffusion::ScheduleError;

#[derive(Debug, Clone)]
pub struct EulerAncestral {
    timesteps: Vec<f64>,
    /// sigma at each timestep, then 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: Prediction,
}

impl EulerAncestral {
    /// Timesteps from the config's spacing (rounded to f32 like diffusers'
    /// `np.float32` timesteps, which matters for fractional linspace steps)
    /// or an explicit list (fractional timesteps allowed).
    pub fn new(config: &SchedulerConfig, timesteps: &Timesteps) -> std::result::Result<Self, ScheduleError> {
        let schedule = NoiseSchedule::from_config(config)?;
        let n_train = schedule.num_train_timesteps();
        let timesteps = match timesteps {
            Timesteps::Steps(n) => spaced(config.timestep_spacing, *n, n_train, config.steps_offset)?
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect(),
            Timesteps::Explicit(ts) => {
                validate(ts, n_train)?;
                ts.clone()
            }
        };
        let mut sigmas: Vec<f64> = timesteps.iter().map(|t| schedule.sigma(*t)).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        // diffusers' `init_noise_sigma` property: sigma_max for linspace and
        // trailing, sqrt(sigma_max^2 + 1) (the exact x_T std) for leading.
        let init_noise_sigma = match config.timestep_spacing {
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        };
        Ok(Self { timesteps, sigmas, init_noise_sigma, prediction: config.prediction_type })
    }

    /// sigma at each timestep followed by a final 0 (diffusers `sigmas`).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// (sigma_up, sigma_down) of step i.
    fn up_down(&self, i: usize) -> (f64, f64) {
        let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).max(0.0).sqrt();
        (up, down)
    }

    fn check(&self, i: usize) -> Result<()> {
        if i >= self.timesteps.len() {
            candle_core::bail!("step {i} of a {}-step Euler-ancestral chain", self.timesteps.len());
        }
        Ok(())
    }
}

impl Sampler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        self.check(i)?;
        let s = self.sigmas[i];
        x / (s * s + 1.0).sqrt()
    }

    fn std(&self, i: usize) -> f64 {
        if i < self.timesteps.len() {
            self.up_down(i).0
        } else {
            0.0
        }
    }

    fn transition(&self, i: usize, x: &Tensor, model_out: &Tensor) -> Result<Transition> {
        self.check(i)?;
        let sigma = self.sigmas[i];
        let x0 = match self.prediction {
            Prediction::Epsilon => (x - model_out.affine(sigma, 0.0)?)?,
            // diffusers: out * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)
            Prediction::VPrediction => {
                (model_out.affine(-sigma / (sigma * sigma + 1.0).sqrt(), 0.0)? + (x / (sigma * sigma + 1.0))?)?
            }
            // diffusers raises NotImplementedError; the math is just x0 = out.
            Prediction::Sample => model_out.clone(),
        };
        let (up, down) = self.up_down(i);
        // derivative (x - x0) / sigma times dt = sigma_down - sigma
        let mean = (x + ((x - &x0)? / sigma)?.affine(down - sigma, 0.0)?)?;
        Ok(Transition { mean, std: up, x0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::samplers::testdata::{assert_close, close, inputs};

    fn sampler(spacing: TimestepSpacing, n: usize, offset: usize, pred: Prediction) -> EulerAncestral {
        let config = SchedulerConfig {
            timestep_spacing: spacing,
            steps_offset: offset,
            prediction_type: pred,
            ..SchedulerConfig::sd_turbo()
        };
        EulerAncestral::new(&config, &Timesteps::Steps(n)).unwrap()
    }

    // s = EulerAncestralDiscreteScheduler(**SD, timestep_spacing=..., steps_offset=...)
    // s.set_timesteps(n); s.timesteps, s.sigmas, s.init_noise_sigma
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn timesteps_sigmas_and_init_sigma_match_diffusers() {
        use TimestepSpacing::*;
        // (spacing, steps, steps_offset, timesteps, sigmas without the final 0, init sigma)
        type Case<'a> = (TimestepSpacing, usize, usize, &'a [f64], &'a [f64], f64);
        let cases: [Case; 5] = [
            (Trailing, 1, 0, &[999.0], &[14.614646911621094], 14.614646911621094),
            (
                Trailing,
                4,
                0,
                &[999.0, 749.0, 499.0, 249.0],
                &[14.614646911621094, 4.081730842590332, 1.6128870248794556, 0.6932054162025452],
                14.614646911621094,
            ),
            (
                Leading,
                4,
                1,
                &[751.0, 501.0, 251.0, 1.0],
                &[4.116698265075684, 1.6236929893493652, 0.6983985900878906, 0.04131447896361351],
                4.236413955688477,
            ),
            (Linspace, 3, 0, &[999.0, 499.5, 0.0], &[14.614646911621094, 1.6155834197998047, 0.02916753478348255], 14.614646911621094),
            (
                Linspace,
                8,
                0,
                &[999.0, 856.2857055664062, 713.5714111328125, 570.8571166992188, 428.1428527832031, 285.4285583496094, 142.7142791748047, 0.0],
                &[14.614646911621094, 6.678018093109131, 3.5220651626586914, 2.0606436729431152, 1.2768337726593018, 0.7912615537643433, 0.4396674931049347, 0.02916753478348255],
                14.614646911621094,
            ),
        ];
        for (spacing, n, off, ts, sigmas, init) in cases {
            let s = sampler(spacing, n, off, Prediction::Epsilon);
            assert_eq!(s.timesteps(), ts, "{spacing:?} {n}");
            assert_eq!(s.sigmas().len(), n + 1);
            assert_eq!(s.sigmas()[n], 0.0);
            for (g, w) in s.sigmas().iter().zip(sigmas) {
                // diffusers' sigmas come from an f32 alphas_cumprod: near t = 0,
                // 1 - ab keeps few f32 digits (sigma(0) is off by 1.3e-5 relative)
                let tol = if *w > 0.5 { 1e-6 } else { 2e-5 };
                assert!(close(*g, *w, tol), "{spacing:?} {n}: sigma {g} vs {w}");
            }
            assert!(close(s.init_noise_sigma(), init, 1e-6), "{spacing:?} {n}: init");
        }
        // f64 replica: sigma(999) = 14.614641229333639
        let s = sampler(Trailing, 1, 0, Prediction::Epsilon);
        assert!(close(s.init_noise_sigma(), 14.614641229333639, 1e-12));
    }

    // for i in idxs: s._step_index = i; t = s.timesteps[i]
    //   xin = s.scale_model_input(X, t); o = s.step(OUT, t, X)
    //   sigma_up = (st**2 * (sf**2 - st**2) / sf**2) ** 0.5
    #[test]
    #[rustfmt::skip] // one reference array per line
    fn turbo_four_steps_match_diffusers() {
        let (x, out, noise) = inputs();
        let s = sampler(TimestepSpacing::Trailing, 4, 0, Prediction::Epsilon);

        // i = 0, t = 999
        assert_close(
            &s.scale_model_input(&x, 0).unwrap(),
            &[0.04034730792045593, 0.1148858442902565, 0.13539177179336548, 0.09222084283828735, 0.005676998756825924, -0.08353681862354279, -0.13346196711063385, -0.12061787396669388],
            1e-6,
        );
        let o = s.step(0, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 3.9193052086553806, 1e-6));
        assert_close(&o.prev, &[-9.796500205993652, -5.647612571716309, -8.078207015991211, -9.74773120880127, -2.7608420848846436, 8.85147762298584, 14.14390754699707, 10.436333656311035], 1e-5);
        assert_close(&o.x0, &[-13.73228645324707, -12.477371215820312, -9.194568634033203, -4.618973255157471, 0.5099020004272461, 5.514698505401611, 9.75337028503418, 12.580321311950684], 1e-5);
        // prev = mean + std * noise
        let re = (&o.mean + noise.affine(o.std, 0.0).unwrap()).unwrap();
        assert_close(&re, &o.prev.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap(), 1e-6);

        // i = 2, t = 499
        let o = s.step(2, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 0.6259146348620308, 1e-6));
        assert_close(&o.prev, &[-0.2475820779800415, 1.323185682296753, 1.0166369676589966, -0.07964789867401123, -0.3954658806324005, -0.0006005167961120605, -0.05457019805908203, -0.6396875381469727], 1e-5);
        assert_close(&o.x0, &[-0.9896963238716125, 0.12019562721252441, 0.7497255802154541, 0.6920822858810425, 0.13025686144828796, -0.48005765676498413, -0.6629061698913574, -0.1835346221923828], 1e-5);

        // i = 3, t = 249: the last transition is deterministic and returns x0_hat
        let want = [-0.08834701776504517, 1.0112864971160889, 1.453136920928955, 1.067760705947876, 0.10340259224176407, -0.9040976762771606, -1.3997031450271606, -1.086388111114502];
        assert!(!s.needs_noise(3) && s.needs_noise(2));
        assert_eq!(s.std(3), 0.0);
        let o = s.step(3, &x, &out, None).unwrap();
        assert_eq!(o.std, 0.0);
        assert_close(&o.prev, &want, 1e-5);
        assert_close(&o.x0, &want, 1e-5);
        // noise given to a deterministic step is ignored
        assert_close(&s.step(3, &x, &out, Some(&noise)).unwrap().prev, &want, 1e-5);
    }

    #[test]
    #[rustfmt::skip] // one reference array per line
    fn one_step_turbo_is_deterministic_x0() {
        let (x, out, _) = inputs();
        let s = sampler(TimestepSpacing::Trailing, 1, 0, Prediction::Epsilon);
        assert!(!s.needs_noise(0));
        let o = s.step(0, &x, &out, None).unwrap();
        assert_close(&o.prev, &[-13.73228645324707, -12.477371215820312, -9.194568634033203, -4.618973255157471, 0.5099020004272461, 5.514698505401611, 9.75337028503418, 12.580321311950684], 1e-5);
    }

    #[test]
    #[rustfmt::skip] // one reference array per line
    fn v_prediction_linspace_and_leading_match_diffusers() {
        let (x, out, noise) = inputs();
        // trailing 4, v_prediction, i = 1 (t = 749)
        let s = sampler(TimestepSpacing::Trailing, 4, 0, Prediction::VPrediction);
        let o = s.step(1, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 1.4816263280439825, 1e-6));
        assert_close(&o.prev, &[0.38274043798446655, 1.7133708000183105, -0.13002008199691772, -2.1741957664489746, -1.1829742193222046, 1.5884720087051392, 2.2629711627960205, 0.056875646114349365], 1e-5);
        assert_close(&o.x0, &[-0.9184480905532837, -0.8457871079444885, -0.6305696964263916, -0.32025977969169617, 0.0330696664750576, 0.378537654876709, 0.6674290299415588, 0.8534549474716187], 1e-5);

        // linspace 3, i = 1: fractional t = 499.5, interpolated sigma
        let s = sampler(TimestepSpacing::Linspace, 3, 0, Prediction::Epsilon);
        assert_close(&s.scale_model_input(&x, 1).unwrap(), &[0.31106916069984436, 0.8857454061508179, 1.04384183883667, 0.7110030651092529, 0.04376845061779022, -0.6440511345863342, -1.0289634466171265, -0.9299381375312805], 1e-6);
        let o = s.step(1, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 0.02916278092996225, 2e-5), "sigma_up ~ sigma(0), see above");
        assert_close(&o.prev, &[-0.9708508253097534, 0.16069340705871582, 0.749884843826294, 0.6495689153671265, 0.10623092204332352, -0.4503178596496582, -0.6217029690742493, -0.1890302449464798], 1e-5);

        // leading 4 with steps_offset 1, i = 0 (t = 751)
        let s = sampler(TimestepSpacing::Leading, 4, 1, Prediction::Epsilon);
        let o = s.step(0, &x, &out, Some(&noise)).unwrap();
        assert!(close(o.std, 1.4920632200556347, 1e-6));
        assert_close(&o.prev, &[-1.7429529428482056, 0.49428749084472656, -0.5824202299118042, -2.198869228363037, -1.0478192567825317, 1.8495036363601685, 2.8490912914276123, 1.2556097507476807], 1e-5);
        assert_close(&o.x0, &[-3.4435980319976807, -2.3057782649993896, -1.1652950048446655, -0.3306931257247925, 0.2033669352531433, 0.6743813753128052, 1.3430061340332031, 2.2744624614715576], 1e-5);
    }

    /// Hand-computed from pso.md 3b with sigma_from = 2, sigma_to = 1:
    /// sigma_up = sqrt(1 * (4 - 1) / 4) = sqrt(0.75), sigma_down = 0.5;
    /// x = 3, eps = 1 -> x0 = 1, mean = 3 + (3 - 1) / 2 * (0.5 - 2) = 1.5.
    #[test]
    fn hand_computed_transition() {
        let s = EulerAncestral {
            timesteps: vec![10.0, 5.0],
            sigmas: vec![2.0, 1.0, 0.0],
            init_noise_sigma: 2.0,
            prediction: Prediction::Epsilon,
        };
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(&[[3.0f64]], &dev).unwrap();
        let eps = Tensor::new(&[[1.0f64]], &dev).unwrap();
        let tr = s.transition(0, &x, &eps).unwrap();
        assert!((tr.std - 0.75f64.sqrt()).abs() < 1e-15);
        assert!((tr.mean.to_vec2::<f64>().unwrap()[0][0] - 1.5).abs() < 1e-14);
        assert_eq!(tr.x0.to_vec2::<f64>().unwrap(), vec![vec![1.0]]);
        assert!(s.step(0, &x, &eps, None).is_err(), "a stochastic step without noise must fail");
        assert!(s.transition(2, &x, &eps).is_err());
        assert!(s.scale_model_input(&x, 2).is_err());
    }

    #[test]
    fn explicit_timesteps() {
        let config = SchedulerConfig::sd_turbo();
        let s = EulerAncestral::new(&config, &Timesteps::Explicit(vec![999.0, 499.5])).unwrap();
        assert!(close(s.sigmas()[1], 1.6155834197998047, 1e-6));
        assert!(matches!(
            EulerAncestral::new(&config, &Timesteps::Explicit(vec![499.0, 999.0])),
            Err(ScheduleError::NotDecreasing { .. })
        ));
        assert!(matches!(
            EulerAncestral::new(&config, &Timesteps::Explicit(vec![1000.0])),
            Err(ScheduleError::TimestepOutOfRange { .. })
        ));
        assert_eq!(EulerAncestral::new(&config, &Timesteps::Steps(0)).unwrap_err(), ScheduleError::ZeroSteps);
    }
}
