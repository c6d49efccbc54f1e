//! Layer tests: forward values against PyTorch (constants in `torch_ref`)
//! and f64 finite-difference gradient checks through candle's backward,
//! conv2d's included.

use candle_core::{Module, Result, Tensor};

use super::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::ops::gradcheck::{check, det_tensor as det, project};

#[rustfmt::skip]
#[path = "layers_torch_ref.rs"]
mod torch_ref;
use torch_ref::*;

fn assert_close(t: &Tensor, expected: &[f64]) {
    let got: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), expected.len(), "element count");
    let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(worst <= 1e-12, "max abs diff {worst:e}\n got {got:?}\nwant {expected:?}");
}

/// Gradient check of `layer(params).forward(x)` with respect to the input
/// and every parameter, through a fixed random projection.
fn assert_grads<F>(inputs: &[Tensor], f: F)
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let worst = check(inputs, |ts| project(&f(ts)?, 99)).unwrap();
    assert!(worst < 1e-5, "worst relative gradient error {worst:e}");
}

fn linear(t: &[Tensor]) -> Linear {
    Linear::new(t[1].clone(), t.get(2).cloned())
}

#[test]
fn linear_matches_torch() {
    let (w, b) = (det(&[5, 4], 21), det(&[5], 22));
    let l = Linear::new(w, Some(b));
    assert_close(&l.forward(&det(&[3, 4], 20)).unwrap(), &LINEAR_2D);
    let y = l.forward(&det(&[2, 3, 4], 23)).unwrap();
    assert_eq!(y.dims(), [2, 3, 5]);
    assert_close(&y, &LINEAR_3D);
}

#[test]
fn linear_gradients() {
    let (w, b) = (det(&[5, 4], 21), det(&[5], 22));
    assert_grads(&[det(&[3, 4], 20), w.clone(), b.clone()], |t| linear(t).forward(&t[0]));
    assert_grads(&[det(&[2, 3, 4], 23), w.clone(), b], |t| linear(t).forward(&t[0]));
    assert_grads(&[det(&[2, 3, 4], 23), w], |t| linear(t).forward(&t[0]));
}

fn conv(t: &[Tensor], stride: usize, padding: usize) -> Conv2d {
    Conv2d::new(t[1].clone(), Some(t[2].clone()), stride, padding)
}

/// (input shape, seed, stride, padding, PyTorch output). Stride 2 with
/// padding 1 on even sides is the UNet's downsampler (one padding row
/// unread), without padding the VAE's after its own pad. 6x5 (padding 1)
/// and 7x6 (padding 0) give the two spatial dims a different parity, which
/// candle's conv2d backward cannot handle by itself (see `Conv2d::forward`).
/// (input shape, seed, stride, padding, PyTorch output)
type ConvCase = (&'static [usize], u64, usize, usize, &'static [f64]);

const CONV_CASES: [ConvCase; 6] = [
    (&[1, 2, 5, 4], 24, 1, 1, &CONV_S1_P1),
    (&[2, 2, 4, 4], 36, 2, 1, &CONV_S2_P1_4X4),
    (&[1, 2, 7, 7], 28, 2, 0, &CONV_S2_P0),
    (&[1, 2, 6, 6], 37, 2, 0, &CONV_S2_P0_6X6),
    (&[1, 2, 6, 5], 27, 2, 1, &CONV_S2_P1),
    (&[1, 2, 7, 6], 29, 2, 0, &CONV_S2_P0_7X6),
];

#[test]
fn conv2d_matches_torch() {
    let params = [det(&[1], 0), det(&[3, 2, 3, 3], 25), det(&[3], 26)];
    for (shape, seed, stride, padding, want) in CONV_CASES {
        assert_close(&conv(&params, stride, padding).forward(&det(shape, seed)).unwrap(), want);
    }
}

#[test]
fn conv2d_gradients() {
    for (shape, seed, stride, padding, _) in CONV_CASES {
        let inputs = [det(shape, seed), det(&[3, 2, 3, 3], 25), det(&[3], 26)];
        assert_grads(&inputs, |t| conv(t, stride, padding).forward(&t[0]));
    }
}

/// Regression test for candle's conv2d backward, which takes the output
/// padding of both spatial dims from the height: with stride 2 on 6x5 it
/// fails with "shape mismatch in add". If this starts failing, candle has
/// fixed it and `Conv2d::forward` could drop its explicit padding.
#[test]
fn conv2d_backward_with_mixed_parity_sides() {
    let (x, w) = (candle_core::Var::from_tensor(&det(&[1, 2, 6, 5], 27)).unwrap(), det(&[3, 2, 3, 3], 25));
    let candle = x.as_tensor().conv2d(&w, 1, 2, 1, 1).unwrap().sum_all().unwrap().backward();
    assert!(candle.is_err(), "candle's conv2d backward now handles mixed parity");
    let ours = Conv2d::new(w, None, 2, 1).forward(x.as_tensor()).unwrap();
    let grad = ours.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad.get(&x).unwrap().dims(), [1, 2, 6, 5]);
}

#[test]
fn group_norm_layer() {
    let gn = |t: &[Tensor]| GroupNorm { weight: t[1].clone(), bias: t[2].clone(), num_groups: 2, eps: 1e-5 };
    let inputs = [det(&[1, 4, 3, 2], 30), det(&[4], 31), det(&[4], 32)];
    assert_close(&gn(&inputs).forward(&inputs[0]).unwrap(), &GROUP_NORM);
    assert_grads(&inputs, |t| gn(t).forward(&t[0]));
}

#[test]
fn layer_norm_layer() {
    let ln = |t: &[Tensor]| LayerNorm { weight: t[1].clone(), bias: Some(t[2].clone()), eps: 1e-5 };
    let inputs = [det(&[2, 3, 6], 33), det(&[6], 34), det(&[6], 35)];
    assert_close(&ln(&inputs).forward(&inputs[0]).unwrap(), &LAYER_NORM);
    assert_grads(&inputs, |t| ln(t).forward(&t[0]));
}
