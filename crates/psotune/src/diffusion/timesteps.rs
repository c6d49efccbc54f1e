//! Choosing the model timesteps of a sampling chain, first (noisiest) to last.

use super::config::TimestepSpacing;
use super::ScheduleError;

/// Which timesteps a sampler runs: a step count laid out by the sampler's
/// rule, or an explicit strictly decreasing list (e.g. DMD2's 999/749/499/249).
#[derive(Debug, Clone, PartialEq)]
pub enum Timesteps {
    Steps(usize),
    Explicit(Vec<f64>),
}

/// diffusers' `set_timesteps` spacing (scheduling_euler_ancestral_discrete.py
/// and scheduling_ddim.py), before any dtype rounding:
/// - leading:  arange(n) * (T // n), reversed, + steps_offset
/// - trailing: round(arange(T, 0, -T / n)) - 1
/// - linspace: linspace(0, T - 1, n), reversed
///
/// Rounding is numpy's half-to-even. For trailing we compute exactly n values;
/// numpy's float `arange` yields n + 1 (ending in -1) for some n (61, 103, ...).
pub fn spaced(
    spacing: TimestepSpacing,
    steps: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Result<Vec<f64>, ScheduleError> {
    let t_max = num_train_timesteps;
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    if steps > t_max {
        return Err(ScheduleError::TooManySteps { steps, max: t_max });
    }
    let n = steps;
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Leading => {
            let ratio = t_max / n;
            (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_max as f64 / n as f64;
            (0..n).map(|i| (t_max as f64 - i as f64 * ratio).round_ties_even() - 1.0).collect()
        }
        TimestepSpacing::Linspace => {
            let last = (t_max - 1) as f64;
            match n {
                1 => vec![0.0],
                // numpy: start + i * step, with the end point set exactly
                _ => (0..n).rev().map(|i| if i == n - 1 { last } else { i as f64 * (last / (n - 1) as f64) }).collect(),
            }
        }
    };
    validate(&ts, num_train_timesteps)?;
    Ok(ts)
}

/// Check a timestep list: non-empty, every t in [0, T - 1], strictly decreasing.
pub fn validate(ts: &[f64], num_train_timesteps: usize) -> Result<(), ScheduleError> {
    if ts.is_empty() {
        return Err(ScheduleError::EmptyTimesteps);
    }
    let max = num_train_timesteps.saturating_sub(1);
    for (index, &t) in ts.iter().enumerate() {
        if !(t >= 0.0 && t <= max as f64) {
            return Err(ScheduleError::TimestepOutOfRange { index, t, max });
        }
        if index > 0 && t >= ts[index - 1] {
            return Err(ScheduleError::NotDecreasing { index, prev: ts[index - 1], t });
        }
    }
    Ok(())
}

/// Require integer timesteps (samplers indexing alphas_cumprod directly).
pub fn require_integers(ts: &[f64]) -> Result<(), ScheduleError> {
    match ts.iter().enumerate().find(|(_, t)| t.fract() != 0.0) {
        Some((index, &t)) => Err(ScheduleError::NotInteger { index, t }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TimestepSpacing::*;

    // DDIMScheduler(**SD, timestep_spacing=s, steps_offset=o).set_timesteps(n)
    // (/tmp/mathref/ref.py, "== ddim"); the Euler schedulers give the same
    // lists for leading/trailing.
    #[test]
    fn spacing_matches_diffusers() {
        let cases: [(TimestepSpacing, usize, usize, &[f64]); 9] = [
            (Trailing, 1, 0, &[999.0]),
            (Trailing, 3, 0, &[999.0, 666.0, 332.0]),
            (Trailing, 4, 0, &[999.0, 749.0, 499.0, 249.0]),
            (Trailing, 8, 0, &[999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0]),
            (Leading, 1, 1, &[1.0]),
            (Leading, 3, 1, &[667.0, 334.0, 1.0]),
            (Leading, 4, 1, &[751.0, 501.0, 251.0, 1.0]),
            (Linspace, 4, 0, &[999.0, 666.0, 333.0, 0.0]),
            (Linspace, 3, 0, &[999.0, 499.5, 0.0]),
        ];
        for (spacing, n, off, want) in cases {
            assert_eq!(spaced(spacing, n, 1000, off).unwrap(), want, "{spacing:?} {n}");
        }
        // np.round is half-to-even: trailing 16 has 937.5 -> 938 and 812.5 -> 812
        let t16 = spaced(Trailing, 16, 1000, 0).unwrap();
        assert_eq!(&t16[..4], &[999.0, 937.0, 874.0, 811.0]);
        // trailing 50: 999, 979, ..., 19; ddim linspace 50 rounds to 999, 979, 958, ...
        let t50 = spaced(Trailing, 50, 1000, 0).unwrap();
        assert_eq!((t50[1], t50[49]), (979.0, 19.0));
        let l50 = spaced(Linspace, 50, 1000, 0).unwrap();
        assert_eq!(l50[2].round_ties_even(), 958.0);
        // numpy's arange gives 62 values for 61 steps; we keep 61, all >= 0
        let t61 = spaced(Trailing, 61, 1000, 0).unwrap();
        assert_eq!((t61.len(), t61[60]), (61, 15.0));
    }

    #[test]
    fn impossible_requests_are_typed_errors() {
        assert_eq!(spaced(Trailing, 0, 1000, 0), Err(ScheduleError::ZeroSteps));
        assert_eq!(spaced(Leading, 1001, 1000, 0), Err(ScheduleError::TooManySteps { steps: 1001, max: 1000 }));
        // leading with an offset can run past the last training timestep
        assert!(
            matches!(spaced(Leading, 1000, 1000, 1), Err(ScheduleError::TimestepOutOfRange { t, .. }) if t == 1000.0)
        );
        assert_eq!(validate(&[], 1000), Err(ScheduleError::EmptyTimesteps));
        assert_eq!(
            validate(&[999.0, 1000.0], 1000),
            Err(ScheduleError::TimestepOutOfRange { index: 1, t: 1000.0, max: 999 })
        );
        assert!(matches!(validate(&[-1.0], 1000), Err(ScheduleError::TimestepOutOfRange { .. })));
        assert!(matches!(validate(&[f64::NAN], 1000), Err(ScheduleError::TimestepOutOfRange { .. })));
        assert_eq!(
            validate(&[999.0, 499.0, 499.0], 1000),
            Err(ScheduleError::NotDecreasing { index: 2, prev: 499.0, t: 499.0 })
        );
        assert_eq!(require_integers(&[999.0, 499.5]), Err(ScheduleError::NotInteger { index: 1, t: 499.5 }));
    }
}
