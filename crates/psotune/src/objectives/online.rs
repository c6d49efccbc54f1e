//! The online PSO loss (pso.md §3b) on sampled trajectories. For one
//! trained transition of a pair of chains (winner w, loser l by the reward),
//! with log-probs of the stored step x_{n-1} given x_n under the trained
//! network (theta) and the frozen one (pre, adapters off):
//!
//!   log r_k = log clamp(exp(logp_theta_k - logp_pre_k), 1 - e, 1 + e)
//!   L_n     = -log sigmoid(beta (log r_w - log r_l))
//!
//! The clamp is applied to the log-ratio with the same bounds (log is
//! monotone, so the values are equal); outside the bounds the ratio is a
//! constant and passes no gradient, as `torch.clamp` does.

use candle_core::{DType, Result, Tensor};

use super::losses::{log_sigmoid, LossOutput};

/// log clamp(exp(lp - lp_pre), 1 - clip, 1 + clip), elementwise, with zero
/// gradient where the clamp is active. `lp_pre` should come in detached.
pub fn clipped_log_ratio(lp: &Tensor, lp_pre: &Tensor, clip: f64) -> Result<Tensor> {
    if !(clip > 0.0 && clip < 1.0) {
        candle_core::bail!("online PSO clip must be in (0, 1), got {clip}");
    }
    let (lo, hi) = ((1.0 - clip).ln(), (1.0 + clip).ln());
    let ratio = (lp - lp_pre)?;
    // mask = 1 inside [lo, hi]: value ratio, gradient 1; outside the
    // clamped bound, a constant. Written with a detached 0/1 mask so the
    // gradient is exactly the clamp's.
    let inside = ratio.ge(lo)?.mul(&ratio.le(hi)?)?.to_dtype(ratio.dtype())?.detach();
    let bound = ratio.detach().clamp(lo, hi)?;
    ratio.mul(&inside)? + bound.mul(&inside.affine(-1.0, 1.0)?)?
}

/// pso.md §3b for a batch of pairs (each tensor [P], one transition each):
/// the mean of -log sigmoid(beta (log r_w - log r_l)). Implicit accuracy:
/// the fraction with log r_w > log r_l; margin: the mean logit.
pub fn pso_online(lp_winner: &Tensor, lp_winner_pre: &Tensor, lp_loser: &Tensor, lp_loser_pre: &Tensor, beta: f64, clip: f64) -> Result<LossOutput> {
    let w = clipped_log_ratio(lp_winner, lp_winner_pre, clip)?;
    let l = clipped_log_ratio(lp_loser, lp_loser_pre, clip)?;
    let logit = (w - l)?.affine(beta, 0.0)?;
    let per = log_sigmoid(&logit)?.neg()?;
    let loss = per.mean_all()?;
    let v = logit.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let n = v.len().max(1) as f64;
    let acc = v.iter().filter(|x| **x > 0.0).count() as f64 / n;
    let margin = v.iter().sum::<f64>() / n;
    Ok(LossOutput { loss, acc: Some(acc), margin: Some(margin), per_pair: Some((per.detach(), logit.detach())) })
}

/// The D3PO baseline (Yang et al. 2024) in the form the PSO paper compares
/// against (pso.md §3b): the same clipped pairwise loss, with each ratio
/// taken against the policy that sampled the chain instead of the frozen
/// distilled model. One optimizer step per sampled batch means the
/// sampling policy has the weights the loss is computed with, so its
/// log-probs are `lp` detached: every ratio is exactly 1 and the gradient
/// is beta/2 (grad lp_w - grad lp_l), with nothing holding the model near
/// where it started.
pub fn d3po_online(lp_winner: &Tensor, lp_loser: &Tensor, beta: f64, clip: f64) -> Result<LossOutput> {
    pso_online(lp_winner, &lp_winner.detach(), lp_loser, &lp_loser.detach(), beta, clip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check, det_tensor};
    use candle_core::{Device, Var};

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn scalar(x: &Tensor) -> f64 {
        x.to_scalar::<f64>().unwrap()
    }

    /// Hand-computed (beta 50, e 0.1; ln 1.1 = 0.0953101798, ln 0.9 = -0.1053605157):
    /// - log ratios 0.02 and -0.03 are inside: logit = 50 * 0.05 = 2.5,
    ///   L = ln(1 + e^-2.5) = 0.0788897343;
    /// - 0.5 and -0.5 clamp to ln 1.1 and ln 0.9: logit = 50 * 0.2006706955
    ///   = 10.0335347731, L = ln(1 + e^-10.0335347731) = 4.3902e-5;
    /// - a loser ahead: 0 and 0.04: logit = -2, L = ln(1 + e^2) = 2.1269280110.
    #[test]
    fn loss_by_hand() {
        let cases = [(0.02, -0.03, 0.078_889_734_3, 1.0), (0.5, -0.5, 4.390_17e-5, 1.0), (0.0, 0.04, 2.126_928_011_0, 0.0)];
        for (w, l, want, acc) in cases {
            // the log-probs themselves need not be small: only differences count
            let out = pso_online(&t(&[w - 3.0]), &t(&[-3.0]), &t(&[l + 7.0]), &t(&[7.0]), 50.0, 0.1).unwrap();
            let got = scalar(&out.loss);
            assert!((got - want).abs() < 1e-9 + 1e-4 * want, "({w}, {l}): {got} vs {want}");
            assert_eq!(out.acc, Some(acc));
        }
        // a batch is the mean of its pairs
        let out = pso_online(&t(&[0.02, 0.0]), &t(&[0.0, 0.0]), &t(&[-0.03, 0.04]), &t(&[0.0, 0.0]), 50.0, 0.1).unwrap();
        assert!((scalar(&out.loss) - (0.078_889_734_3 + 2.126_928_011_0) / 2.0).abs() < 1e-9);
        assert_eq!(out.acc, Some(0.5));
        assert!((out.margin.unwrap() - (2.5 - 2.0) / 2.0).abs() < 1e-12);
        assert!(pso_online(&t(&[0.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), 50.0, 1.0).is_err());
    }

    /// Policy = frozen (adapters off, or fresh adapters with B = 0): every
    /// ratio is exactly 1 and the loss exactly log 2, whatever beta.
    #[test]
    fn equal_log_probs_give_log_2() {
        let lp = det_tensor(&[4], 1);
        for beta in [1.0, 50.0, 5000.0] {
            let out = pso_online(&lp, &lp, &lp.affine(2.0, 0.0).unwrap(), &lp.affine(2.0, 0.0).unwrap(), beta, 0.1).unwrap();
            assert_eq!(scalar(&out.loss), std::f64::consts::LN_2);
            assert_eq!((out.acc, out.margin), (Some(0.0), Some(0.0)));
        }
    }

    /// Inside the clip the gradient is the logistic loss's; outside it is 0.
    #[test]
    fn gradients_match_finite_differences_and_the_clamp_stops_them() {
        let pre_w = det_tensor(&[3], 2);
        let pre_l = det_tensor(&[3], 3);
        let dw = t(&[0.01, -0.04, 0.03]);
        let dl = t(&[-0.02, 0.05, 0.0]);
        let worst = check(&[(&pre_w + &dw).unwrap(), (&pre_l + &dl).unwrap()], |a| {
            pso_online(&a[0], &pre_w, &a[1], &pre_l, 50.0, 0.1).map(|o| o.loss)
        })
        .unwrap();
        assert!(worst < 1e-5, "relative gradient error {worst}");

        let w = Var::from_tensor(&t(&[0.3, 0.01])).unwrap();
        let l = Var::from_tensor(&t(&[0.0, -0.3])).unwrap();
        let zeros = t(&[0.0, 0.0]);
        let out = pso_online(w.as_tensor(), &zeros, l.as_tensor(), &zeros, 50.0, 0.1).unwrap();
        let g = out.loss.backward().unwrap();
        let gw = g.get(w.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        let gl = g.get(l.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!((gw[0], gl[1]), (0.0, 0.0), "clamped ratios pass no gradient");
        assert!(gw[1] < 0.0 && gl[0] > 0.0, "raise the winner, lower the loser: {gw:?} {gl:?}");
    }

    /// D3PO: the ratio is against the sampling policy (lp detached), so the
    /// loss is log 2 and the gradient sigmoid(0) beta = beta / 2 per
    /// log-prob, winner up and loser down, whatever the frozen model says.
    #[test]
    fn d3po_ratio_is_against_the_sampling_policy() {
        let w = Var::new(&[-3.0f64, 1.5], &Device::Cpu).unwrap();
        let l = Var::new(&[0.25f64, -7.0], &Device::Cpu).unwrap();
        let out = d3po_online(w.as_tensor(), l.as_tensor(), 4.0, 0.1).unwrap();
        assert!((scalar(&out.loss) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(out.margin, Some(0.0));
        let g = out.loss.backward().unwrap();
        // d/dlp_w of -mean log sigmoid(beta (lp_w - lp_l)) at 0: -beta / 2 / P.
        assert_eq!(g.get(w.as_tensor()).unwrap().to_vec1::<f64>().unwrap(), vec![-1.0, -1.0]);
        assert_eq!(g.get(l.as_tensor()).unwrap().to_vec1::<f64>().unwrap(), vec![1.0, 1.0]);
    }
}
