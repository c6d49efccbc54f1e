//! Gradient checkpointing: run a block without keeping its autograd graph
//! and recompute it in the backward pass (PyTorch's
//! `torch.utils.checkpoint`, non-reentrant variant, in spirit).
//!
//! candle keeps every intermediate tensor a loss depends on until the
//! backward pass ends. For the SD 2.1 UNet at 32x32 latents that is ~4 GB
//! on top of the weights. [`checkpoint`] keeps only the block's inputs: its
//! forward runs the block on detached inputs and drops the graph; when the
//! backward pass reaches the block, the block is run again with tracking on
//! and back-propagated on its own, and the gradients it yields are handed to
//! the outer backward.
//!
//! The gradients of the block's *parameters* (LoRA A/B, or every weight in
//! full tuning) are not inputs of a candle op, so candle would not pass them
//! on. Rather than a side store every training path would have to merge, they
//! travel through the graph itself, on a chain of one-element "route" ops:
//!
//! ```text
//! token0 ─route(x)─ token1 ─route(p1)─ token2 ─route(p2)─ token3 ─block─> y
//! ```
//!
//! Each route op has the routed tensor (an input or a parameter) as its
//! second argument and a one-element token as its first; the block op hangs
//! off the last token. The backward pass reaches the block op before any
//! route op (they are upstream of it); its backward recomputes the block,
//! puts every routed tensor's gradient in a shared stash, and each route
//! op's backward then returns its slot as the gradient of its tensor. So the
//! gradients land in the ordinary `GradStore` of `loss.backward()`, where
//! `Grads::from_store` and every training loop already look.
//!
//! The parameters are found, not declared: the block's forward output is
//! walked for the leaf variables it depends on (`Tensor::sorted_nodes`), so a
//! forgotten weight cannot silently lose its gradient. Tensors the closure
//! captures that are tracked but not variables (a weight computed outside
//! the block) are walked through to their variables the same way.
//!
//! Recomputing is only exact if the block computes the same thing twice:
//! no randomness inside, and the LoRA switch must be in the same state at
//! backward time as at forward time (it is: `LoraSwitch::run_disabled`
//! restores it). A switch that differs changes which variables the block
//! reaches, and the backward fails with an error instead of returning wrong
//! gradients.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, TensorId, Var};

/// The block as the checkpoint op holds it: shared between the forward, the
/// op kept in the graph and its recomputation.
type Block = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

/// One gradient per routed tensor (tracked inputs first, then parameters),
/// filled by the block op's backward and emptied by the route ops'.
type Stash = Arc<Mutex<Vec<Option<Tensor>>>>;

/// `f(inputs)`, keeping only `inputs` for the backward pass instead of every
/// intermediate of `f`, which is run a second time during the backward.
///
/// `f` must use only `inputs` and tensors it owns (typically a clone of the
/// block's module): tracked tensors reached any other way are found and get
/// their gradients, but each recomputation re-walks their graph. Gradients
/// equal those without checkpointing (same ops, same order).
///
/// When nothing `f` touches needs a gradient (inference, or a block without
/// trainable weights fed by untracked inputs) this is a plain call. Off the
/// CPU it is a plain call too (the op has only a CPU forward).
pub fn checkpoint<F>(inputs: &[&Tensor], f: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
{
    if inputs.iter().any(|t| !t.device().is_cpu()) {
        let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        return f(&owned);
    }
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let out = f(&detached)?;
    if !out.device().is_cpu() {
        candle_core::bail!("checkpoint: the block moved its output off the CPU");
    }
    let tracked: Vec<bool> = inputs.iter().map(|t| t.track_op()).collect();
    let params = leaf_vars(&out, &HashSet::new());
    if params.is_empty() && !tracked.contains(&true) {
        return Ok(out);
    }
    // The op must return owned storage; this copy of the output is the only
    // extra memory, and it replaces the graph `out` is dropped with.
    let result = (owned_storage(&out)?, out.shape().clone());
    drop(out);

    let routed: Vec<&Tensor> = inputs.iter().zip(&tracked).filter(|(_, &t)| t).map(|(x, _)| *x).chain(&params).collect();
    let stash: Stash = Arc::new(Mutex::new(vec![None; routed.len()]));
    let mut token = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
    for (slot, t) in routed.into_iter().enumerate() {
        token = token.apply_op2(t, Route { slot, stash: stash.clone() })?;
    }
    token.apply_op1(CheckpointOp {
        block: Arc::new(f),
        inputs: detached,
        tracked,
        params,
        stash,
        result: Mutex::new(Some(result)),
    })
}

/// The variables `y` depends on, excluding `skip` (the recomputation's own
/// input variables), in graph order.
fn leaf_vars(y: &Tensor, skip: &HashSet<TensorId>) -> Vec<Tensor> {
    y.sorted_nodes().into_iter().filter(|n| n.is_variable() && !skip.contains(&n.id())).cloned().collect()
}

fn ids(ts: &[Tensor]) -> HashSet<TensorId> {
    ts.iter().map(|t| t.id()).collect()
}

/// A copy of `t`'s elements as the storage a CPU custom op returns.
fn owned_storage(t: &Tensor) -> Result<CpuStorage> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        d => candle_core::bail!("checkpoint: a block output of dtype {d:?} has no gradient"),
    })
}

fn lock_err<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("checkpoint: gradient stash lock poisoned".into())
}

/// The block: its forward hands over the output computed by [`checkpoint`];
/// its backward recomputes the block and fills the stash.
struct CheckpointOp {
    block: Block,
    /// The inputs, detached (same storage as the caller's tensors).
    inputs: Vec<Tensor>,
    /// Which inputs were tracked, and so routed (in order, first slots).
    tracked: Vec<bool>,
    /// The variables the block reached in its forward (the last slots).
    params: Vec<Tensor>,
    stash: Stash,
    result: Mutex<Option<(CpuStorage, Shape)>>,
}

impl CustomOp1 for CheckpointOp {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.result.lock().map_err(lock_err)?.take().ok_or_else(|| candle_core::Error::Msg("checkpoint: forward ran twice".into()))
    }

    fn bwd(&self, token: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Fresh variables for the tracked inputs: the gradients to route.
        let mut input_vars = Vec::new();
        let mut args = Vec::with_capacity(self.inputs.len());
        for (x, &t) in self.inputs.iter().zip(&self.tracked) {
            if t {
                let v = Var::from_tensor(x)?.as_tensor().clone();
                input_vars.push(v.clone());
                args.push(v);
            } else {
                args.push(x.clone());
            }
        }
        let out = (self.block)(&args)?;
        if out.shape() != grad.shape() {
            candle_core::bail!("checkpoint: recomputed output {:?}, gradient {:?}", out.shape(), grad.shape());
        }
        if ids(&leaf_vars(&out, &ids(&input_vars))) != ids(&self.params) {
            candle_core::bail!(
                "checkpoint: the recomputed block reaches other trainable tensors than its forward did \
                 (was the LoRA switch changed between forward and backward?)"
            );
        }
        let store = out.apply_op1(Seed { grad: grad.clone() })?.backward()?;
        let mut stash = self.stash.lock().map_err(lock_err)?;
        for (slot, t) in input_vars.iter().chain(&self.params).enumerate() {
            stash[slot] = store.get(t).cloned();
        }
        Ok(Some(token.zeros_like()?))
    }
}

/// Starts the recomputation's backward with the incoming gradient: the
/// scalar it returns is never read, its backward hands `grad` to the block
/// output unchanged (exact, where `(out * grad).sum()` would be too, but
/// with an extra product).
struct Seed {
    grad: Tensor,
}

impl CustomOp1 for Seed {
    fn name(&self) -> &'static str {
        "checkpoint-seed"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(())))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.grad.clone()))
    }
}

/// Carries the gradient of one routed tensor (its second argument) from the
/// stash into the outer backward.
struct Route {
    slot: usize,
    stash: Stash,
}

impl CustomOp2 for Route {
    fn name(&self) -> &'static str {
        "checkpoint-route"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(1)))
    }

    fn bwd(&self, token: &Tensor, routed: &Tensor, _: &Tensor, _: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.stash.lock().map_err(lock_err)?.get_mut(self.slot).and_then(Option::take);
        // candle's backward expects a gradient for every tracked non-variable
        // node it visits: an input the block did not use gets zeros.
        let g = match g {
            None if !routed.is_variable() => Some(routed.zeros_like()?),
            g => g,
        };
        // The token's gradient keeps the chain alive down to its first link.
        Ok((Some(token.zeros_like()?), g))
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
