use super::torch_ref::*;
use candle_core::DType;

use super::{assert_close, assert_grads, max_diff};
use crate::ops::gradcheck::det_tensor as det;
use crate::ops::softmax_last_dim;

#[test]
fn softmax_matches_torch() {
    let x = det(&[2, 3, 7], 10);
    assert_close(&softmax_last_dim(&(&x * 4.0).unwrap()).unwrap(), &SOFTMAX, 1e-14);
    // Scores in the hundreds: exp would overflow without the max shift.
    assert_close(&softmax_last_dim(&(&x * 1000.0).unwrap()).unwrap(), &SOFTMAX_LARGE, 1e-14);
}

#[test]
fn softmax_gradients() {
    assert_grads(&[(det(&[2, 3, 7], 10) * 4.0).unwrap()], |t| softmax_last_dim(&t[0]));
}

/// A row of 4096 scores in bf16: summing the exponentials in bf16 would
/// stop growing long before the true sum.
#[test]
fn half_precision_softmax_close_to_f32() {
    let x = (det(&[2, 4096], 10) * 3.0).unwrap();
    for (dt, tol) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        let xh = x.to_dtype(dt).unwrap();
        let out = softmax_last_dim(&xh).unwrap();
        assert_eq!(out.dtype(), dt);
        let want = softmax_last_dim(&xh.to_dtype(DType::F32).unwrap()).unwrap();
        let scale = want.max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!(max_diff(&out, &want) < tol * scale, "{dt:?}: {} vs scale {scale}", max_diff(&out, &want));
    }
}
