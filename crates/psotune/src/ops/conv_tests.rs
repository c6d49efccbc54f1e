//! The fast conv2d against candle's (values and gradients, f32) and against
//! finite differences (f64), over the kernel/stride/padding/parity cases the
//! models use, on both thread plans and with chunked column buffers.

use candle_core::{DType, Tensor, Var};

use super::{candle_conv2d, conv2d_chunked, geometry, COL_CHUNK_ELEMS};
use crate::ops::gradcheck::{check, det_tensor, project};

/// (batch, cin, h, w, cout, kernel, stride, padding)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    (1, 3, 5, 4, 2, 3, 1, 1),
    (2, 3, 5, 4, 2, 3, 1, 1),
    (3, 2, 6, 5, 3, 3, 2, 1),
    (2, 2, 7, 6, 3, 3, 2, 0),
    (1, 2, 7, 7, 3, 3, 2, 0),
    (2, 2, 7, 6, 3, 3, 2, 1), // mixed parity: candle's own backward fails here
    (3, 4, 4, 5, 3, 1, 1, 0), // pointwise
    (2, 4, 5, 5, 3, 1, 2, 0),
    (2, 3, 4, 4, 2, 2, 1, 1),
    // Many small images: packed several per product (uneven last group).
    (7, 3, 3, 4, 2, 3, 1, 1),
    (9, 4, 2, 2, 3, 1, 1, 0),
    (5, 2, 4, 3, 3, 3, 2, 1),
];

fn inputs(c: Case, seed: u64) -> (Tensor, Tensor) {
    let (b, cin, h, w, cout, k, _, _) = c;
    (det_tensor(&[b, cin, h, w], seed), det_tensor(&[cout, cin, k, k], seed + 1))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[test]
fn conv2d_gradcheck_f64() {
    for (i, &c) in CASES.iter().enumerate() {
        let (x, w) = inputs(c, 10 * i as u64);
        let b = det_tensor(&[c.4], 10 * i as u64 + 2);
        for chunk in [COL_CHUNK_ELEMS, 1] {
            let worst = check(&[x.clone(), w.clone()], |t| project(&conv2d_chunked(&t[0], &t[1], None, c.6, c.7, chunk)?, 99)).unwrap();
            assert!(worst < 1e-5, "case {c:?} chunk {chunk}: relative error {worst:e}");
            let worst = check(&[x.clone(), w.clone(), b.clone()], |t| project(&conv2d_chunked(&t[0], &t[1], Some(&t[2]), c.6, c.7, chunk)?, 98)).unwrap();
            assert!(worst < 1e-5, "case {c:?} chunk {chunk} with bias: relative error {worst:e}");
        }
    }
}

/// Same values and gradients as candle's conv2d (through the mixed-parity
/// workaround), in f32, with one-row chunks too.
#[test]
fn conv2d_matches_candle_f32() {
    for (i, &c) in CASES.iter().enumerate() {
        let (x, w) = inputs(c, 10 * i as u64 + 3);
        let f32_var = |t: Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
        let (x, w, b) = (f32_var(x), f32_var(w), f32_var(det_tensor(&[c.4], 10 * i as u64 + 4)));
        let g = geometry(&x, &w, c.6, c.7).unwrap();
        let reference = candle_conv2d(&x, &w, &g).unwrap().broadcast_add(&b.reshape((1, c.4, 1, 1)).unwrap()).unwrap();
        let ref_grads = project(&reference, 5).unwrap().backward().unwrap();
        for chunk in [COL_CHUNK_ELEMS, 1] {
            let y = conv2d_chunked(&x, &w, Some(&b), c.6, c.7, chunk).unwrap();
            assert_eq!(y.dims(), reference.dims(), "case {c:?}");
            let grads = project(&y, 5).unwrap().backward().unwrap();
            let pairs = [
                (y.clone(), reference.clone()),
                (grads.get(&x).unwrap().clone(), ref_grads.get(&x).unwrap().clone()),
                (grads.get(&w).unwrap().clone(), ref_grads.get(&w).unwrap().clone()),
                (grads.get(&b).unwrap().clone(), ref_grads.get(&b).unwrap().clone()),
            ];
            for (name, (got, want)) in ["y", "dx", "dw", "db"].iter().zip(pairs) {
                let d = max_abs_diff(&got, &want);
                assert!(d <= 1e-5 * max_abs(&want).max(1.0), "case {c:?} chunk {chunk} {name}: diff {d:e}");
            }
        }
    }
}

/// Only the inputs that take part in the graph get a gradient; a frozen
/// weight (LoRA training) costs no weight-gradient product.
#[test]
fn conv2d_frozen_weight() {
    let x = Var::from_tensor(&det_tensor(&[2, 3, 5, 5], 1)).unwrap();
    let w = det_tensor(&[4, 3, 3, 3], 2);
    let grads = conv2d_chunked(&x, &w, None, 1, 1, COL_CHUNK_ELEMS).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_some());
    assert!(grads.get(&w).is_none());
}

/// Non-contiguous input and f16 (candle's path) give the same result.
#[test]
fn conv2d_layouts_and_fallback() {
    let x = det_tensor(&[2, 3, 6, 5], 7).to_dtype(DType::F32).unwrap();
    let w = det_tensor(&[4, 3, 3, 3], 8).to_dtype(DType::F32).unwrap();
    let want = super::conv2d(&x, &w, 1, 1).unwrap();
    let xt = x.transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap();
    assert!(max_abs_diff(&super::conv2d(&xt, &w, 1, 1).unwrap(), &want) < 1e-6);
    let half = super::conv2d(&x.to_dtype(DType::F16).unwrap(), &w.to_dtype(DType::F16).unwrap(), 1, 1).unwrap();
    assert!(max_abs_diff(&half.to_dtype(DType::F32).unwrap(), &want) < 2e-2);
    assert!(super::conv2d(&x, &det_tensor(&[4, 2, 3, 3], 1).to_dtype(DType::F32).unwrap(), 1, 1).is_err());
    let bias = det_tensor(&[4], 9).to_dtype(DType::F32).unwrap();
    let with_bias = super::conv2d_bias(&x, &w, Some(&bias), 1, 1).unwrap();
    let half = super::conv2d_bias(&x.to_dtype(DType::F16).unwrap(), &w.to_dtype(DType::F16).unwrap(), Some(&bias.to_dtype(DType::F16).unwrap()), 1, 1).unwrap();
    assert!(max_abs_diff(&half.to_dtype(DType::F32).unwrap(), &with_bias) < 2e-2);
    assert!(super::conv2d_bias(&x, &w, Some(&det_tensor(&[3], 9).to_dtype(DType::F32).unwrap()), 1, 1).is_err());
}
