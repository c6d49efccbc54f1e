use candle_core::{Tensor, Var};

use super::torch_ref::*;
use super::{assert_close, assert_grads};
use crate::ops::gradcheck::{det_tensor as det, project};
use crate::ops::upsample::nearest_index;
use crate::ops::{upsample_nearest2x, upsample_nearest_to};

#[test]
fn upsample_matches_torch() {
    assert_close(&upsample_nearest2x(&det(&[1, 2, 2, 3], 13)).unwrap(), &UPSAMPLE_2X, 0.0);
    assert_close(&upsample_nearest_to(&det(&[1, 1, 3, 5], 14), 7, 9).unwrap(), &UPSAMPLE_TO_7_9, 0.0);
}

/// Sizes where PyTorch's f32 index arithmetic differs from exact arithmetic
/// (24 -> 74 picks source 11 for output 37, not 12).
#[test]
fn nearest_index_matches_torch_rounding() {
    let cases: [(usize, &[u32]); 4] =
        [(24, &NEAREST_INDEX_24_TO_74), (26, &NEAREST_INDEX_26_TO_22), (39, &NEAREST_INDEX_39_TO_33), (45, &NEAREST_INDEX_45_TO_129)];
    for (inp, want) in cases {
        assert_eq!(nearest_index(inp, want.len()), want, "{inp} -> {}", want.len());
    }
    // 2x and identity take PyTorch's exact shortcuts.
    assert_eq!(nearest_index(3, 6), [0, 0, 1, 1, 2, 2]);
    assert_eq!(nearest_index(3, 3), [0, 1, 2]);
}

#[test]
fn upsample_gradients() {
    assert_grads(&[det(&[1, 2, 2, 3], 13)], |t| upsample_nearest2x(&t[0]));
    // Odd target sizes (a skip connection of odd size) and a downsize.
    assert_grads(&[det(&[1, 2, 3, 5], 14)], |t| upsample_nearest_to(&t[0], 7, 9));
    assert_grads(&[det(&[1, 1, 5, 4], 15)], |t| upsample_nearest_to(&t[0], 3, 7));
}

/// Gradient of `project(up(x), 1) + project(x, 2)` where the input is used
/// twice, as a decoder feature feeding both an upsampler and a skip path.
/// candle's backward visits the upsample after the skip path's product here.
fn two_use_grad(up: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Vec<f64> {
    let x = Var::from_tensor(&det(&[1, 1, 2, 2], 3)).unwrap();
    let loss = (project(&up(x.as_tensor()).unwrap(), 1).unwrap() + project(x.as_tensor(), 2).unwrap()).unwrap();
    loss.backward().unwrap().get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Regression test for candle's `upsample_nearest2d` backward, which assigns
/// the 2x2 block sums to the input's gradient instead of adding them, losing
/// what the input's other uses contributed.
#[test]
fn upsample_backward_sums_not_overwrites() {
    // Expected: block sums of the upsample path's weights plus the skip
    // path's weights.
    let w_up: Vec<f64> = det(&[1, 1, 4, 4], 1).flatten_all().unwrap().to_vec1().unwrap();
    let w_skip: Vec<f64> = det(&[1, 1, 2, 2], 2).flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f64> = (0..4)
        .map(|i| {
            let (r, c) = (2 * (i / 2), 2 * (i % 2));
            w_skip[i] + w_up[4 * r + c] + w_up[4 * r + c + 1] + w_up[4 * (r + 1) + c] + w_up[4 * (r + 1) + c + 1]
        })
        .collect();
    let ours = two_use_grad(upsample_nearest2x);
    let err = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(err < 1e-12, "ours {ours:?} want {want:?}");

    // candle 0.11.1 gets this wrong; if this starts failing, candle has fixed
    // its backward and the workaround could go.
    let candle = two_use_grad(|x| x.upsample_nearest2d(4, 4));
    let err = candle.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(err > 1e-3, "candle's upsample_nearest2d backward now accumulates: {candle:?}");
}
