//! The one-step transfer term (`objective.one-step-transfer`).
//!
//! Why: forward-noised PSO (pso.md §3a) trains the epsilon prediction at
//! the distilled timesteps, and a K-step chain corrects its first step's
//! errors in the steps after it; a 1-step sample has no later step, and at
//! t = 999 an epsilon error is amplified about 15x in x0. On the emoji model
//! every objective that moved the 4-step samples toward the style made the
//! 1-step samples worse (README, style transfer). This term asks the 1-step
//! map to change the way the K-step map changed: for fresh noise z,
//!
//! ```text
//! target(z) = x0_pre^1(z) + ( x_theta^K(z) - x_pre^K(z) )
//! L = mse( x0_theta^1(z), target(z) )
//! ```
//!
//! with the same step noise in both K-step chains. It is zero at the start
//! (theta = pre) and needs no data: it never pulls the 1-step map toward a
//! posterior mean, only along the change the objective already made.

use candle_core::{DType, Tensor};

use crate::diffusion::{NoiseRng, Sampler};
use crate::error::Result;
use crate::nn::LoraSwitch;
use crate::pipeline::{Pipeline, PromptEmbeds};

/// Pure: the 1-step target, `one_pre + (chain_theta - chain_pre)`, detached.
pub fn transfer_target(one_pre: &Tensor, chain_theta: &Tensor, chain_pre: &Tensor) -> Result<Tensor> {
    Ok((one_pre + (chain_theta - chain_pre)?)?.detach())
}

/// The term for one micro-batch of prompts (`policy` embeddings for the
/// trained model, `frozen` for the frozen one): its loss, with the graph
/// through the trained 1-step output. Noise comes from `noise`, so a
/// resumed run draws the same.
#[allow(clippy::too_many_arguments)]
pub fn one_step_transfer(
    pipe: &Pipeline,
    switch: &LoraSwitch,
    chain: &dyn Sampler,
    policy: &PromptEmbeds,
    frozen: &PromptEmbeds,
    latent_shape: &[usize],
    size: (usize, usize),
    noise: &mut NoiseRng,
) -> Result<Tensor> {
    let guidance = pipe.defaults.guidance;
    let z = noise.randn(latent_shape, DType::F32, &pipe.device)?;
    let mut step_noise = Vec::new();
    for i in 0..chain.num_steps() {
        step_noise.push(if chain.needs_noise(i) { Some(noise.randn(latent_shape, DType::F32, &pipe.device)?) } else { None });
    }
    let given = |i: usize, _: &candle_core::Shape| -> Result<Tensor> {
        step_noise.get(i).cloned().flatten().ok_or_else(|| crate::error::Error::invalid(format!("chain step {i} has no noise")))
    };
    let policy_detached = PromptEmbeds { hidden: policy.hidden.detach(), pooled: policy.pooled.as_ref().map(Tensor::detach) };
    let theta = pipe.denoise(chain, &z, &policy_detached, guidance, None, size, given)?;
    let pre = switch.run_disabled(|| pipe.denoise(chain, &z, frozen, guidance, None, size, given))?;
    let target = transfer_target(&pre.first_x0, &theta.latents, &pre.latents)?;
    let one = pipe.first_step_x0(chain, &z, policy, guidance, None, size)?;
    Ok((one - target)?.sqr()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn target_is_the_frozen_one_step_moved_by_the_chain_change() {
        let d = Device::Cpu;
        let one_pre = Tensor::new(&[1.0f32, -2.0, 0.5], &d).unwrap();
        let theta = Tensor::new(&[0.25f32, 0.0, 3.0], &d).unwrap();
        let pre = Tensor::new(&[0.5f32, 1.0, 3.0], &d).unwrap();
        let t = transfer_target(&one_pre, &theta, &pre).unwrap().to_vec1::<f32>().unwrap();
        // 1 + (0.25 - 0.5), -2 + (0 - 1), 0.5 + 0
        assert_eq!(t, vec![0.75, -3.0, 0.5]);
    }
}
