//! Tests of the ops: forward values against PyTorch (constants in
//! `torch_ref`) and f64 finite-difference gradient checks.

mod activation;
mod attention;
mod fused;
mod norm;
mod simd_paths;
mod softmax;
#[rustfmt::skip]
mod torch_ref;
mod upsample;

use candle_core::{Result, Tensor};

use super::gradcheck::{check, project};

/// Largest relative finite-difference error we accept in f64.
const GRAD_TOL: f64 = 1e-5;

/// Asserts that `t` (any float dtype) equals `expected` element-wise within `tol`.
fn assert_close(t: &Tensor, expected: &[f64], tol: f64) {
    let got: Vec<f64> = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), expected.len(), "element count");
    let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(worst <= tol, "max abs diff {worst:e} > {tol:e}\n got {got:?}\nwant {expected:?}");
}

/// Gradient check of a tensor-valued `f` through a fixed random projection
/// (so errors in different elements cannot cancel).
fn assert_grads<F>(inputs: &[Tensor], f: F)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let worst = check(inputs, |ts| project(&f(ts)?, 99)).unwrap();
    assert!(worst < GRAD_TOL, "worst relative gradient error {worst:e}");
}

/// Largest absolute difference between two tensors, in f64.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}
