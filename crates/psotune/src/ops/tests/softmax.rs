use super::torch_ref::*;
use super::{assert_close, assert_grads};
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
