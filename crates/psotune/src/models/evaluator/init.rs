//! Fresh weights for training an evaluator from scratch. The parameter
//! list comes from building the model once against a backend that records
//! every (name, shape) it is asked for, so the list cannot drift from the
//! model code; each tensor is then drawn by its role:
//!
//! - convolution kernels: He normal, std sqrt(2 / fan_in) (He et al. 2015),
//!   the init for SiLU/ReLU networks;
//! - the two heads: zeros, so training starts from uniform predictions
//!   (loss = ln(classes)) and the first steps shape the heads, not noise;
//! - GroupNorm scales: ones; every bias: zeros.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use super::config::EvaluatorConfig;
use super::model::Evaluator;
use crate::diffusion::NoiseRng;
use crate::error::Result;

/// (checkpoint name, shape) of each parameter, in the order asked for.
type ShapeList = Vec<(String, Vec<usize>)>;

#[derive(Default)]
struct Recorder(Arc<Mutex<ShapeList>>);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.lock().expect("recorder poisoned").push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("evaluator init: unexpected unchecked get of {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Every parameter of the model `config` describes: (checkpoint name, shape).
pub fn parameter_shapes(config: &EvaluatorConfig) -> Result<ShapeList> {
    let list = Arc::new(Mutex::new(Vec::new()));
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(Recorder(list.clone()));
    Evaluator::new(VarBuilder::from_backend(backend, DType::F32, Device::Cpu), config)?;
    let out = list.lock().expect("recorder poisoned").clone();
    Ok(out)
}

/// Initial f32 weights for `config`, drawn from the seeded stream `seed`
/// (same seed, same weights), keyed by checkpoint name.
pub fn init_weights(config: &EvaluatorConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = NoiseRng::new(seed);
    let dev = Device::Cpu;
    let mut out = HashMap::new();
    for (name, shape) in parameter_shapes(config)? {
        let is_head = name.starts_with("style_head.") || name.starts_with("category_head.");
        let t = match shape.as_slice() {
            [cout, cin, kh, kw] if name.ends_with(".weight") => {
                let std = (2.0 / (cin * kh * kw) as f64).sqrt();
                (rng.randn((*cout, *cin, *kh, *kw), DType::F32, &dev)? * std)?
            }
            [_] if name.ends_with(".weight") && !is_head => Tensor::ones(shape.as_slice(), DType::F32, &dev)?,
            _ => Tensor::zeros(shape.as_slice(), DType::F32, &dev)?,
        };
        out.insert(name, t);
    }
    Ok(out)
}
