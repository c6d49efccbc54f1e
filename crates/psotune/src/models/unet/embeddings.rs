//! Time embeddings (diffusers `models/embeddings.py`: `get_timestep_embedding`,
//! `Timesteps`, `TimestepEmbedding`) and the LCM guidance-scale embedding.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Activation;
use crate::nn::Linear;
use crate::ops;

/// diffusers `get_timestep_embedding` with `scale = 1`, `max_period = 10000`:
/// `[N] -> [N, dim]` sinusoids, `[cos, sin]` when `flip_sin_to_cos`.
///
/// Computed on the host in f32, step by step as diffusers does in torch
/// (`exponent = -ln(10000) * i`, `/ (half - shift)`, `exp`, `t * freq`): the
/// timesteps are inputs, never trained, and large timesteps make the
/// sinusoid arguments sensitive to every rounding.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, freq_shift: f64, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (neg_log * i as f32 / denom).exp()).collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            data.extend(cos.chain(sin));
        } else {
            data.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_vec(data, (timesteps.len(), dim), device)
}

/// The guidance-scale embedding LCM-distilled UNets take as `timestep_cond`
/// (diffusers `LatentConsistencyModelPipeline.get_guidance_scale_embedding`,
/// after VDM): `w` is usually `guidance_scale - 1`. Returns f32 `[N, dim]`.
pub fn guidance_scale_embedding(w: &[f32], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    // torch.log(torch.tensor(10000.0)) / (half_dim - 1), in f32.
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut data = Vec::with_capacity(w.len() * dim);
    for &g in w {
        let g = g * 1000.0;
        data.extend(freqs.iter().map(|f| (g * f).sin()));
        data.extend(freqs.iter().map(|f| (g * f).cos()));
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_vec(data, (w.len(), dim), device)
}

/// Read a [N] / [1] / scalar tensor of timesteps (any dtype) as f32, the way
/// diffusers' `timesteps.float()` does, broadcasting a single value to `n`.
pub(crate) fn timesteps_f32(t: &Tensor, n: usize, what: &str) -> Result<Vec<f32>> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(|x| x as f32).collect();
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        len if len == n => Ok(v),
        len => candle_core::bail!("{what}: {len} values for a batch of {n} (give one per sample, or one for all)"),
    }
}

pub(crate) fn apply(act: Activation, x: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Silu => ops::silu(x),
        Activation::Gelu => ops::gelu_erf(x),
        Activation::Relu => x.relu(),
    }
}

/// diffusers `TimestepEmbedding`: `linear_2(act(linear_1(x + cond_proj(c))))`,
/// with an optional post activation. `act` is silu for every UNet we build.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    /// LCM: projects the guidance-scale embedding onto the sinusoids.
    pub cond_proj: Option<Linear>,
    pub post_act: Option<Activation>,
}

impl TimestepEmbedding {
    pub fn load(vb: VarBuilder, in_dim: usize, time_embed_dim: usize, cond_proj_dim: Option<usize>, post_act: Option<Activation>) -> Result<Self> {
        let linear_1 = Linear::load(vb.pp("linear_1"), in_dim, time_embed_dim, true)?;
        let linear_2 = Linear::load(vb.pp("linear_2"), time_embed_dim, time_embed_dim, true)?;
        let cond_proj = match cond_proj_dim {
            Some(d) => Some(Linear::load(vb.pp("cond_proj"), d, in_dim, false)?),
            None => None,
        };
        Ok(Self { linear_1, linear_2, cond_proj, post_act })
    }

    pub fn forward(&self, x: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.cond_proj, condition) {
            (Some(p), Some(c)) => (x + p.forward(&c.to_dtype(x.dtype())?)?)?,
            (None, Some(_)) => candle_core::bail!("timestep_cond given, but this UNet has no time_cond_proj_dim"),
            _ => x.clone(),
        };
        let h = self.linear_2.forward(&ops::silu(&self.linear_1.forward(&x)?)?)?;
        match self.post_act {
            Some(a) => apply(a, &h),
            None => Ok(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers from diffusers 0.42.1 / torch:
    /// `get_timestep_embedding(torch.tensor([999., 1.5]), 6, True, 0)` and
    /// `..., 7, False, 1)`.
    #[test]
    fn sinusoids_match_diffusers() {
        let e = timestep_embedding(&[999.0, 1.5], 6, true, 0.0, &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = e.to_vec2().unwrap();
        let want = [
            [0.999650_f32, -0.728673, -0.549265, -0.026461, 0.684861, 0.835648],
            [0.070737, 0.997577, 0.999995, 0.997495, 0.069568, 0.003232],
        ];
        for (g, w) in got.iter().zip(want.iter()) {
            for (a, b) in g.iter().zip(w.iter()) {
                assert!((a - b).abs() < 2e-5, "{got:?}");
            }
        }
        let e = timestep_embedding(&[3.0], 7, false, 1.0, &Device::Cpu).unwrap();
        let got: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
        let want = [0.14112_f32, 0.0299955, 0.0003, -0.9899925, 0.99955, 0.9999999, 0.0];
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 2e-5, "{got:?}");
        }
    }

    #[test]
    fn single_timestep_broadcasts_and_wrong_count_errors() {
        let t = Tensor::new(&[7i64], &Device::Cpu).unwrap();
        assert_eq!(timesteps_f32(&t, 3, "t").unwrap(), vec![7.0; 3]);
        let t = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        assert!(timesteps_f32(&t, 3, "t").is_err());
    }
}
