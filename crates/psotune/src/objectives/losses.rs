//! The loss formulas of pso.md §3a and §4 as pure functions of tensors.
//! Shapes: every prediction and `eps` is [B, ...]; "mse" is the mean over
//! all dimensions but the batch (pso.md's convention, which fixes the scale
//! of beta). Frozen-model predictions must come in detached.

use candle_core::{DType, Result, Tensor};

/// pso-hinge: weight of the reference term inside the hinge (§4).
pub const HINGE_REFERENCE_WEIGHT: f64 = 0.1;
/// pso-hinge: weight of the reference-MSE prior term (§4).
pub const HINGE_PRIOR_WEIGHT: f64 = 0.5;

/// A scalar loss to differentiate, plus what the progress bar reports.
#[derive(Debug, Clone)]
pub struct LossOutput {
    pub loss: Tensor,
    /// Implicit accuracy: fraction of pairs whose target is favoured over
    /// its reference (None for losses without pairs).
    pub acc: Option<f64>,
    /// Mean of the logit the loss pushes up (None without pairs).
    pub margin: Option<f64>,
    /// Per pair, detached: (its loss, its logit), [B] each, so that a loop
    /// can report them by timestep (None without pairs).
    pub per_pair: Option<(Tensor, Tensor)>,
}

/// Mean squared error per sample: [B, ...] x [B, ...] -> [B].
pub fn per_sample_mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.flatten_from(1)?.mean(1)
}

/// log(sigmoid(z)), stable, with a gradient of sigmoid(-z) at every z.
/// With m = [z >= 0] (a detached 0/1 mask), z+ = m z and z- = (1 - m) z:
/// log sigmoid(z) = z- - log(1 + exp(z- - z+)), where z- - z+ = -|z|.
/// Why this form: the textbook -(relu(-z) + log(1 + exp(-|z|))) differentiates
/// |z| and relu at z = 0, where every pair of a fresh LoRA's first step sits
/// (B = 0), and candle's relu'(0) = 1 with abs'(0) = 1 gives a slope of 1.5
/// instead of 1/2. Here the mask is a constant: at z = 0 either value of m
/// gives 1/2, and for large |z| no two terms cancel (z - |z| would lose
/// the slope exp(-z) to rounding).
pub fn log_sigmoid(z: &Tensor) -> Result<Tensor> {
    let m = z.ge(0.0)?.to_dtype(z.dtype())?.detach();
    // Both halves straight from z (not z- = z - z+), so each path's
    // gradient reaches z alone and nothing cancels.
    let z_pos = (z * &m)?;
    let z_neg = (z * m.affine(-1.0, 1.0)?)?;
    z_neg.clone() - ((&z_neg - &z_pos)?.exp()? + 1.0)?.log()?
}

fn mean_f64(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()
}

fn fraction_negative(t: &Tensor) -> Result<f64> {
    let v = t.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(v.iter().filter(|x| **x < 0.0).count() as f64 / v.len().max(1) as f64)
}

/// Shared body of PSO and Diffusion-DPO: with
/// d(x) = mse(eps, theta(x)) - mse(eps, frozen(x)) per sample,
/// L = mean(-log sigmoid(-scale (d(target) - d(reference)))).
fn logistic_pair(eps: &Tensor, target: &Tensor, target_frozen: &Tensor, reference: &Tensor, reference_frozen: &Tensor, scale: f64) -> Result<LossOutput> {
    let d_target = (per_sample_mse(eps, target)? - per_sample_mse(eps, target_frozen)?)?;
    let d_reference = (per_sample_mse(eps, reference)? - per_sample_mse(eps, reference_frozen)?)?;
    let diff = (d_target - d_reference)?;
    let logit = diff.affine(-scale, 0.0)?;
    let per = log_sigmoid(&logit)?.neg()?;
    let loss = per.mean_all()?;
    let per_pair = Some((per.detach(), logit.detach()));
    Ok(LossOutput { acc: Some(fraction_negative(&diff)?), margin: Some(mean_f64(&logit)?), loss, per_pair })
}

/// PSO with forward-noised pairs (pso.md §3a):
/// L = -log sigmoid(-beta (d(target) - d(reference))).
/// Accuracy: fraction with d(target) < d(reference); margin: mean of
/// -beta (d(target) - d(reference)).
pub fn pso(eps: &Tensor, target: &Tensor, target_frozen: &Tensor, reference: &Tensor, reference_frozen: &Tensor, beta: f64) -> Result<LossOutput> {
    logistic_pair(eps, target, target_frozen, reference, reference_frozen, beta)
}

/// Diffusion-DPO (Wallace et al.; pso.md §3a): the same quantity with its
/// own convention of halving beta, -log sigmoid(-beta/2 (...)).
pub fn diffusion_dpo(eps: &Tensor, target: &Tensor, target_frozen: &Tensor, reference: &Tensor, reference_frozen: &Tensor, beta: f64) -> Result<LossOutput> {
    logistic_pair(eps, target, target_frozen, reference, reference_frozen, beta / 2.0)
}

/// The PSO authors' concept-customization hinge (pso.md §4), no frozen term:
/// d = L(target) - 0.1 L(reference); L = mean(relu(1 + beta d)) + 0.5 mean(L(reference)),
/// L(x) the trained network's epsilon-MSE. Accuracy: fraction with
/// L(target) < L(reference); margin: mean of -beta d.
pub fn pso_hinge(eps: &Tensor, target: &Tensor, reference: &Tensor, beta: f64) -> Result<LossOutput> {
    let l_target = per_sample_mse(eps, target)?;
    let l_reference = per_sample_mse(eps, reference)?;
    let d = (&l_target - l_reference.affine(HINGE_REFERENCE_WEIGHT, 0.0)?)?;
    let per = (d.affine(beta, 1.0)?.relu()? + l_reference.affine(HINGE_PRIOR_WEIGHT, 0.0)?)?;
    let loss = per.mean_all()?;
    let acc = fraction_negative(&(&l_target - &l_reference)?)?;
    let per_pair = Some((per.detach(), d.affine(-beta, 0.0)?.detach()));
    Ok(LossOutput { acc: Some(acc), margin: Some(-beta * mean_f64(&d)?), loss, per_pair })
}

/// The ordinary diffusion loss, mean over everything (as the diffusers
/// training scripts' `F.mse_loss(..., reduction="mean")`).
pub fn sft(eps: &Tensor, target: &Tensor) -> Result<LossOutput> {
    Ok(LossOutput { loss: per_sample_mse(eps, target)?.mean_all()?, acc: None, margin: None, per_pair: None })
}
