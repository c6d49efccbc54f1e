use candle_core::{DType, Tensor};

use super::torch_ref::*;
use super::{assert_close, assert_grads, max_diff};
use crate::ops::gradcheck::det_tensor as det;
use crate::ops::{group_norm, layer_norm};

#[test]
fn layer_norm_matches_torch() {
    let (x, w, b) = (det(&[2, 3, 5], 1), det(&[5], 2), det(&[5], 3));
    assert_close(&layer_norm(&x, &w, Some(&b), 1e-5).unwrap(), &LAYER_NORM_BIAS, 1e-12);
    assert_close(&layer_norm(&x, &w, None, 1e-5).unwrap(), &LAYER_NORM_NO_BIAS, 1e-12);
}

#[test]
fn layer_norm_gradients() {
    let (x, w, b) = (det(&[2, 3, 5], 1), det(&[5], 2), det(&[5], 3));
    assert_grads(&[x.clone(), w.clone(), b], |t| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5));
    assert_grads(&[x, w], |t| layer_norm(&t[0], &t[1], None, 1e-5));
}

#[test]
fn group_norm_matches_torch() {
    let out = group_norm(&det(&[2, 4, 2, 3], 4), 2, &det(&[4], 5), &det(&[4], 6), 1e-6).unwrap();
    assert_close(&out, &GROUP_NORM_4D, 1e-12);
    let out = group_norm(&det(&[2, 6, 4], 7), 3, &det(&[6], 8), &det(&[6], 9), 1e-5).unwrap();
    assert_close(&out, &GROUP_NORM_3D, 1e-12);
}

#[test]
fn group_norm_gradients() {
    let inputs = [det(&[2, 4, 2, 3], 4), det(&[4], 5), det(&[4], 6)];
    assert_grads(&inputs, |t| group_norm(&t[0], 2, &t[1], &t[2], 1e-6));
    let inputs = [det(&[2, 6, 4], 7), det(&[6], 8), det(&[6], 9)];
    assert_grads(&inputs, |t| group_norm(&t[0], 3, &t[1], &t[2], 1e-5));
}

#[test]
fn group_norm_rejects_bad_groups() {
    let x = det(&[1, 6, 2], 1);
    let w = det(&[6], 2);
    assert!(group_norm(&x, 4, &w, &w, 1e-5).is_err());
    assert!(group_norm(&x, 0, &w, &w, 1e-5).is_err());
}

/// Activations far from zero, as in a UNet: f16 can hold them but not
/// their sums, so statistics must be taken in f32.
fn offset_input(shape: &[usize], seed: u64) -> Tensor {
    ((det(shape, seed) * 4.0).unwrap() + 50.0).unwrap()
}

#[test]
fn half_precision_norms_use_f32_statistics() {
    for (dt, tol) in [(DType::F16, 4e-3), (DType::BF16, 3e-2)] {
        let h = |t: &Tensor| t.to_dtype(dt).unwrap();
        let f = |t: &Tensor| t.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();

        let (x, w, b) = (offset_input(&[2, 3, 64], 1), det(&[64], 2), det(&[64], 3));
        let out = layer_norm(&h(&x), &h(&w), Some(&h(&b)), 1e-5).unwrap();
        assert_eq!(out.dtype(), dt);
        let want = layer_norm(&f(&x), &f(&w), Some(&f(&b)), 1e-5).unwrap();
        assert!(max_diff(&out, &want) < tol, "{dt:?} layer_norm: {}", max_diff(&out, &want));

        // 4096 values near 50 per group: their sum (~2e5) overflows f16.
        let (x, w, b) = (offset_input(&[1, 4, 32, 32], 4), det(&[4], 5), det(&[4], 6));
        let out = group_norm(&h(&x), 1, &h(&w), &h(&b), 1e-6).unwrap();
        assert_eq!(out.dtype(), dt);
        let want = group_norm(&f(&x), 1, &f(&w), &f(&b), 1e-6).unwrap();
        assert!(max_diff(&out, &want) < tol, "{dt:?} group_norm: {}", max_diff(&out, &want));

        // 3D input ([B, C, L], as in Transformer2DModel's norm).
        let (x, w, b) = (offset_input(&[2, 8, 40], 7), det(&[8], 8), det(&[8], 9));
        let out = group_norm(&h(&x), 4, &h(&w), &h(&b), 1e-6).unwrap();
        let want = group_norm(&f(&x), 4, &f(&w), &f(&b), 1e-6).unwrap();
        assert!(max_diff(&out, &want) < tol, "{dt:?} group_norm 3D: {}", max_diff(&out, &want));
    }
}

/// Half-precision activations with f32 norm weights (e.g. trainable norms
/// kept in f32) work and give the f16 result.
#[test]
fn half_input_with_f32_weights() {
    let x = offset_input(&[2, 3, 16], 1).to_dtype(DType::F16).unwrap();
    let (w, b) = (det(&[16], 2).to_dtype(DType::F32).unwrap(), det(&[16], 3).to_dtype(DType::F32).unwrap());
    let out = layer_norm(&x, &w, Some(&b), 1e-5).unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let want = layer_norm(&x.to_dtype(DType::F32).unwrap(), &w, Some(&b), 1e-5).unwrap();
    assert!(max_diff(&out, &want) < 4e-3);
}
