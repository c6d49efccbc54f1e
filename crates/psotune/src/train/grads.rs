//! Gradients keyed by parameter name, gradient accumulation over
//! micro-batches, and clipping by global norm.
//!
//! candle's `GradStore` is keyed by tensor id, which changes whenever a model
//! is rebuilt (a resumed run, LoRA adapters switched in). Keying by the
//! checkpoint name instead lets the optimizer, clipping and checkpoints agree
//! on which gradient belongs to which parameter.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// Gradients of named parameters. Parameters that got no gradient from the
/// backward pass (not reached by the loss) are absent, as `p.grad is None`
/// in PyTorch.
#[derive(Debug, Clone, Default)]
pub struct Grads {
    map: BTreeMap<String, Tensor>,
}

impl Grads {
    /// Pick the gradients of `params` out of a backward pass.
    pub fn from_store(store: &GradStore, params: &[(String, Var)]) -> Self {
        let map = params
            .iter()
            .filter_map(|(name, var)| store.get(var.as_tensor()).map(|g| (name.clone(), g.clone())))
            .collect();
        Grads { map }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, grad: Tensor) -> Option<Tensor> {
        self.map.insert(name.into(), grad)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// (name, gradient) in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    /// The L2 norm of all gradients taken together, as
    /// `torch.nn.utils.clip_grad_norm_` computes it: the norm of the
    /// per-tensor norms (each in f32, half-precision gradients upcast).
    pub fn global_norm(&self) -> Result<f64> {
        let mut sum_sq = 0f64;
        for g in self.map.values() {
            let n = g.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
            sum_sq += n * n;
        }
        Ok(sum_sq.sqrt())
    }

    /// Multiplies every gradient by `f` (unscaling after a scaled loss).
    pub fn scale_by(&mut self, f: f64) -> Result<()> {
        for g in self.map.values_mut() {
            *g = g.affine(f, 0.0)?;
        }
        Ok(())
    }

    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)` with the L2 norm:
    /// scale every gradient by `max_norm / (norm + 1e-6)` when that is below 1,
    /// and return the norm before clipping. As in PyTorch (with
    /// `error_if_nonfinite=False`), a non-finite norm is returned, not an
    /// error, and the gradients become NaN: the caller decides what to do.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        // torch computes the coefficient in f32 and multiplies every grad by
        // it, clamped to 1.0; multiplying by exactly 1.0 is skipped here. A NaN
        // norm fails the test and, as in torch, turns the gradients into NaN.
        let coef = (max_norm as f32) / (norm as f32 + 1e-6);
        if coef >= 1.0 {
            return Ok(norm);
        }
        for g in self.map.values_mut() {
            *g = g.affine(coef as f64, 0.0)?;
        }
        Ok(norm)
    }
}

/// Sums the gradients of several micro-batches and averages them, so that
/// `n` micro-batches of size `b` step like one batch of size `n * b` with a
/// mean loss (the `loss / accumulation_steps` of diffusers' training scripts,
/// applied once to the sum instead of to each loss).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sum: BTreeMap<String, Tensor>,
    count: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one micro-batch's gradients. A parameter missing from some
    /// micro-batches accumulates over the ones where it had a gradient (and
    /// is still divided by the total count, as PyTorch's summed `.grad`).
    pub fn add(&mut self, grads: Grads) -> Result<()> {
        self.sum_in(grads)?;
        self.count += 1;
        Ok(())
    }

    /// Add the gradient of a further term of the current micro-batch's
    /// loss (its backward taken separately, e.g. the one-step transfer
    /// term): summed like [`Self::add`] but not counted as a micro-batch,
    /// so that `finish` gives the mean of (main loss + term) over the
    /// micro-batches, not a mean over twice as many.
    pub fn add_term(&mut self, grads: Grads) -> Result<()> {
        self.sum_in(grads)
    }

    /// Shorthand for `add_term(Grads::from_store(store, params))`.
    pub fn add_term_store(&mut self, store: &GradStore, params: &[(String, Var)]) -> Result<()> {
        self.add_term(Grads::from_store(store, params))
    }

    fn sum_in(&mut self, grads: Grads) -> Result<()> {
        for (name, g) in grads.map {
            let s = match self.sum.remove(&name) {
                Some(s) => (s + g)?,
                None => g,
            };
            self.sum.insert(name, s);
        }
        Ok(())
    }

    /// Shorthand for `add(Grads::from_store(store, params))`.
    pub fn add_store(&mut self, store: &GradStore, params: &[(String, Var)]) -> Result<()> {
        self.add(Grads::from_store(store, params))
    }

    /// Micro-batches added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean gradient over the micro-batches added; empty when none were.
    pub fn finish(self) -> Result<Grads> {
        if self.count <= 1 {
            return Ok(Grads { map: self.sum });
        }
        let n = self.count as f64;
        let map = self.sum.into_iter().map(|(k, s)| Ok((k, (s / n)?))).collect::<Result<_>>()?;
        Ok(Grads { map })
    }
}
