use super::torch_ref::*;
use super::{assert_close, assert_grads};
use crate::ops::gradcheck::det_tensor as det;
use crate::ops::{geglu, gelu_erf, quick_gelu, silu};

fn act_input() -> candle_core::Tensor {
    (det(&[2, 3, 4], 11) * 3.0).unwrap()
}

#[test]
fn activations_match_torch() {
    let x = act_input();
    assert_close(&gelu_erf(&x).unwrap(), &GELU_ERF, 1e-12);
    assert_close(&quick_gelu(&x).unwrap(), &QUICK_GELU, 1e-12);
    assert_close(&silu(&x).unwrap(), &SILU, 1e-12);
    assert_close(&geglu(&(det(&[2, 3, 8], 12) * 3.0).unwrap()).unwrap(), &GEGLU, 1e-12);
}

/// candle's gelu_erf backward uses 0.398942 for 1/sqrt(2 pi), a relative
/// error of 7e-7 in one term: well inside the tolerance, and below what an
/// f32 training step resolves.
#[test]
fn gelu_erf_gradient() {
    assert_grads(&[act_input()], |t| gelu_erf(&t[0]));
}

#[test]
fn quick_gelu_gradient() {
    assert_grads(&[act_input()], |t| quick_gelu(&t[0]));
}

#[test]
fn silu_gradient() {
    assert_grads(&[act_input()], |t| silu(&t[0]));
}

#[test]
fn geglu_gradient() {
    assert_grads(&[(det(&[2, 3, 8], 12) * 3.0).unwrap()], |t| geglu(&t[0]));
}

#[test]
fn geglu_rejects_odd_width() {
    assert!(geglu(&det(&[2, 5], 1)).is_err());
}
