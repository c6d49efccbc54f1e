//! Test helpers: deterministic random weights for any module we can build.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::nn::Weights;
use crate::ops::gradcheck::det_tensor;

/// Build once against a `VarMap` to learn every key and shape, then fill
/// them with deterministic values in [-0.5, 0.5] (f64).
pub fn random_weights<T>(build: impl Fn(VarBuilder) -> Result<T>) -> HashMap<String, Tensor> {
    let vm = VarMap::new();
    build(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu)).unwrap();
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), (det_tensor(data[k].dims(), 1000 + i as u64) * 0.5).unwrap()))
        .collect()
}

/// Strict f64 weights from a map.
pub fn weights(map: HashMap<String, Tensor>) -> Weights {
    Weights::from_tensors(map, "test", DType::F64, &Device::Cpu)
}
