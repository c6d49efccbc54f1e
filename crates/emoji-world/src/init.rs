//! Fresh weights for training from scratch, with PyTorch's default
//! initialisation (what `nn.Linear` / `nn.Conv2d` / norms do on
//! construction, which diffusers keeps): weights and biases uniform in
//! +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)), norm scales 1 and
//! shifts 0; embeddings N(0, 0.02) as transformers initialises CLIP.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use psotune::diffusion::NoiseRng;

/// Build the module once against a throw-away VarMap to learn every key and
/// shape, then draw each tensor (sorted by name, one seeded stream).
pub fn init_weights<T>(build: impl Fn(VarBuilder) -> candle_core::Result<T>, seed: u64) -> Result<HashMap<String, Tensor>> {
    let vm = VarMap::new();
    build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let data = vm.data().lock().map_err(|_| anyhow!("poisoned var map"))?;
    let shapes: HashMap<String, Vec<usize>> = data.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    let mut names: Vec<&String> = shapes.keys().collect();
    names.sort();
    let mut rng = NoiseRng::new(seed);
    let mut out = HashMap::new();
    for name in names {
        let dims = &shapes[name];
        let n: usize = dims.iter().product();
        let (stem, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let weight_dims = shapes.get(&format!("{stem}.weight"));
        let values: Vec<f32> = if name.ends_with("token_embedding.weight") || name.ends_with("position_embedding.weight") {
            let t = rng.randn(n, DType::F32, &Device::Cpu)?;
            (t * 0.02)?.to_vec1()?
        } else if dims.len() == 1 && weight_dims.is_some_and(|w| w.len() == 1) {
            // A norm layer (its weight is a vector): scale 1, shift 0.
            vec![if leaf == "weight" { 1.0 } else { 0.0 }; n]
        } else {
            let fan_in: usize = match (leaf, weight_dims) {
                ("bias", Some(w)) => w[1..].iter().product(),
                _ => dims[1..].iter().product(),
            };
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect()
        };
        out.insert(name.clone(), Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use psotune::nn::{GroupNorm, Linear};

    #[test]
    fn linear_and_norm_follow_torch_defaults() {
        let w = init_weights(
            |vb| {
                Linear::load(vb.pp("proj"), 16, 4, true)?;
                GroupNorm::load(vb.pp("norm"), 2, 4, 1e-5)
            },
            0,
        )
        .unwrap();
        let max = |k: &str| w[k].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max("proj.weight") <= 0.25 && max("proj.weight") > 0.15);
        assert!(max("proj.bias") <= 0.25);
        assert_eq!(w["norm.weight"].to_vec1::<f32>().unwrap(), vec![1.0; 4]);
        assert_eq!(w["norm.bias"].to_vec1::<f32>().unwrap(), vec![0.0; 4]);
    }
}
