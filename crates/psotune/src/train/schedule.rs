//! Learning-rate schedules, as diffusers' `get_scheduler` builds them
//! (diffusers 0.42 `optimization.py`): a `LambdaLR` whose factor at
//! `current_step` multiplies the base learning rate.
//!
//! `step` is the number of optimizer steps already taken: the first update
//! uses the factor at 0 (diffusers' scripts call `lr_scheduler.step()` after
//! `optimizer.step()`), so with warmup the first update has learning rate 0.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// `get_constant_schedule`: the base rate throughout.
    Constant,
    /// `get_constant_schedule_with_warmup`: linear from 0 over
    /// `warmup_steps`, then the base rate.
    ConstantWithWarmup { warmup_steps: u64 },
    /// `get_linear_schedule_with_warmup`: warmup, then linear down to 0 at
    /// `total_steps`.
    Linear { warmup_steps: u64, total_steps: u64 },
    /// `get_cosine_schedule_with_warmup`: warmup, then a cosine over
    /// `num_cycles` periods (0.5 = a half cosine from the base rate to 0 at
    /// `total_steps`).
    Cosine { warmup_steps: u64, total_steps: u64, num_cycles: f64 },
    /// Warmup, the base rate, then linear down to 0 over the last
    /// `decay_steps` before `total_steps` ("warmup-stable-decay"). Until the
    /// decay starts it equals `ConstantWithWarmup`, so a run can be
    /// lengthened into a decay tail and resumed from its constant part.
    WarmupStableDecay { warmup_steps: u64, total_steps: u64, decay_steps: u64 },
}

impl LrSchedule {
    /// Cosine with warmup and diffusers' default half cycle.
    pub fn cosine(warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule::Cosine { warmup_steps, total_steps, num_cycles: 0.5 }
    }

    /// The factor on the base learning rate after `step` optimizer steps.
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = |w: u64| (step < w).then(|| step as f64 / w.max(1) as f64);
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::ConstantWithWarmup { warmup_steps } => warmup(warmup_steps).unwrap_or(1.0),
            LrSchedule::Linear { warmup_steps, total_steps } => warmup(warmup_steps).unwrap_or_else(|| {
                let left = total_steps as f64 - step as f64;
                (left / total_steps.saturating_sub(warmup_steps).max(1) as f64).max(0.0)
            }),
            LrSchedule::Cosine { warmup_steps, total_steps, num_cycles } => warmup(warmup_steps).unwrap_or_else(|| {
                let progress = (step - warmup_steps) as f64 / total_steps.saturating_sub(warmup_steps).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }),
            LrSchedule::WarmupStableDecay { warmup_steps, total_steps, decay_steps } => warmup(warmup_steps).unwrap_or_else(|| {
                let left = total_steps.saturating_sub(step);
                if left >= decay_steps {
                    1.0
                } else {
                    left as f64 / decay_steps as f64
                }
            }),
        }
    }

    /// `base_lr * factor(step)`.
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Factors printed by diffusers 0.42.1 `get_scheduler` (the LambdaLR's
    /// lr with base lr 1.0, read before each `optimizer.step()`):
    /// ```python
    /// import torch
    /// from diffusers.optimization import get_scheduler
    /// for name in ["constant", "constant_with_warmup", "linear", "cosine"]:
    ///     opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ///     s = get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=10)
    ///     out = []
    ///     for _ in range(12):
    ///         out.append(s.get_last_lr()[0]); opt.step(); s.step()
    ///     print(name, [repr(x) for x in out])
    /// ```
    const DIFFUSERS_CONSTANT: [f64; 12] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    const DIFFUSERS_CONSTANT_WITH_WARMUP: [f64; 12] = [0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    const DIFFUSERS_LINEAR: [f64; 12] = [0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 0.8571428571428571, 0.7142857142857143, 0.5714285714285714, 0.42857142857142855, 0.2857142857142857, 0.14285714285714285, 0.0, 0.0];
    const DIFFUSERS_COSINE: [f64; 12] = [0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 0.9504844339512095, 0.8117449009293668, 0.6112604669781572, 0.38873953302184283, 0.18825509907063326, 0.04951556604879048, 0.0, 0.04951556604879043];

    #[test]
    fn matches_diffusers_get_scheduler() {
        let cases: [(LrSchedule, [f64; 12]); 4] = [
            (LrSchedule::Constant, DIFFUSERS_CONSTANT),
            (LrSchedule::ConstantWithWarmup { warmup_steps: 3 }, DIFFUSERS_CONSTANT_WITH_WARMUP),
            (LrSchedule::Linear { warmup_steps: 3, total_steps: 10 }, DIFFUSERS_LINEAR),
            (LrSchedule::cosine(3, 10), DIFFUSERS_COSINE),
        ];
        for (sched, want) in cases {
            for (step, w) in want.iter().enumerate() {
                let got = sched.factor(step as u64);
                assert!((got - w).abs() <= 1e-15, "{sched:?} step {step}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn hand_computed_values_and_degenerate_configs() {
        // Cosine: halfway through the decay the factor is exactly 0.5.
        assert_eq!(LrSchedule::cosine(0, 10).factor(5), 0.5);
        assert_eq!(LrSchedule::cosine(2, 10).factor(1), 0.5);
        assert_eq!(LrSchedule::cosine(2, 10).factor(10), 0.0);
        // Zero warmup / zero-length decay do not divide by zero.
        assert_eq!(LrSchedule::ConstantWithWarmup { warmup_steps: 0 }.factor(0), 1.0);
        assert_eq!(LrSchedule::Linear { warmup_steps: 5, total_steps: 5 }.factor(5), 0.0);
        assert_eq!(LrSchedule::Linear { warmup_steps: 0, total_steps: 4 }.lr(2.0, 1), 1.5);
        // Warmup-stable-decay: 2 warmup steps, flat, then 4 steps down to 0 at 10.
        let wsd = LrSchedule::WarmupStableDecay { warmup_steps: 2, total_steps: 10, decay_steps: 4 };
        let f: Vec<f64> = (0..12).map(|s| wsd.factor(s)).collect();
        assert_eq!(f, [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        assert_eq!(LrSchedule::WarmupStableDecay { warmup_steps: 0, total_steps: 3, decay_steps: 0 }.factor(2), 1.0);
        let json = serde_json::to_string(&LrSchedule::cosine(1, 2)).unwrap();
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), LrSchedule::cosine(1, 2));
    }
}
