//! Dynamic loss scaling for f16 activations, as PyTorch's `GradScaler`:
//! the loss is multiplied by `scale` before the backward pass so that small
//! gradients do not flush to zero in f16, and divided out of the (f32)
//! parameter gradients before clipping. A step whose gradients overflowed
//! (a non-finite norm) is skipped and the scale halved; after
//! [`GROWTH_INTERVAL`] good steps in a row it doubles. bf16 has f32's range
//! and needs none.

use serde::{Deserialize, Serialize};

/// `GradScaler`'s default `init_scale`.
pub const INIT_SCALE: f64 = 65536.0;
/// `GradScaler`'s default `growth_interval`.
pub const GROWTH_INTERVAL: u64 = 2000;
/// Below this the scale stops halving: gradients that are not finite at a
/// scale of 1 are not an f16 range problem (see [`LossScale::update`]).
pub const MIN_SCALE: f64 = 1.0;

/// The scaler's state, saved in each checkpoint so a resumed run scales as
/// the uninterrupted one does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScale {
    /// The factor the loss is multiplied by now.
    pub scale: f64,
    /// Good steps since the last change of scale.
    pub good_steps: u64,
    /// Steps skipped for overflow since the run began.
    pub skipped: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: INIT_SCALE, good_steps: 0, skipped: 0 }
    }
}

/// What to do with a step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaledStep {
    /// Finite: unscale and apply.
    Apply,
    /// Overflowed: skip the update; the scale has been halved.
    Skip,
    /// Not finite at the smallest scale: not an overflow, a fault.
    Fault,
}

impl LossScale {
    /// Records a step whose scaled gradients had global norm `norm`.
    pub fn update(&mut self, norm: f64) -> ScaledStep {
        if norm.is_finite() {
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
            return ScaledStep::Apply;
        }
        if self.scale <= MIN_SCALE {
            return ScaledStep::Fault;
        }
        self.scale = (self.scale / 2.0).max(MIN_SCALE);
        self.good_steps = 0;
        self.skipped += 1;
        ScaledStep::Skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScale::default();
        assert_eq!(s.update(f64::INFINITY), ScaledStep::Skip);
        assert_eq!((s.scale, s.skipped, s.good_steps), (32768.0, 1, 0));
        assert_eq!(s.update(f64::NAN), ScaledStep::Skip);
        assert_eq!(s.scale, 16384.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert_eq!(s.update(3.0), ScaledStep::Apply);
        }
        assert_eq!(s.scale, 16384.0);
        assert_eq!(s.update(0.0), ScaledStep::Apply);
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 2));
    }

    #[test]
    fn a_non_finite_norm_at_scale_one_is_a_fault() {
        let mut s = LossScale { scale: 2.0, good_steps: 5, skipped: 0 };
        assert_eq!(s.update(f64::INFINITY), ScaledStep::Skip);
        assert_eq!(s.scale, 1.0);
        assert_eq!(s.update(f64::NAN), ScaledStep::Fault);
        assert_eq!((s.scale, s.skipped), (1.0, 1));
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = LossScale { scale: 512.0, good_steps: 7, skipped: 3 };
        let back: LossScale = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
