//! Test helpers: deterministic random weights for any module we can build.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::models::unet::UNetConfig;
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

/// A two-level UNet small enough for f64 gradient checks (channels 4/8,
/// cross-attention dim 5); `sdxl` adds `text_time` conditioning.
pub fn tiny_config(sdxl: bool, linear_proj: bool) -> UNetConfig {
    let extra = if sdxl {
        r#", "addition_embed_type": "text_time", "addition_time_embed_dim": 2, "projection_class_embeddings_input_dim": 15"#
    } else {
        ""
    };
    let json = format!(
        r#"{{"block_out_channels": [4, 8], "layers_per_block": 1, "attention_head_dim": [2, 2],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 5, "norm_num_groups": 2, "use_linear_projection": {linear_proj}{extra}}}"#
    );
    UNetConfig::from_json(&json, "tiny.json").unwrap()
}
