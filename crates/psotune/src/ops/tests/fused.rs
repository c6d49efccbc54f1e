//! The fused CPU kernels (layer norm, GEGLU, bias add) against their
//! composed versions, and their gradients by finite differences, on shapes
//! larger than a parallel task so the task split and reduction are covered.

use candle_core::{DType, Tensor, Var};

use super::{assert_grads, max_diff};
use crate::ops::activation::geglu_composed;
use crate::ops::gradcheck::{det_tensor as det, project};
use crate::ops::norm::layer_norm_composed;
use crate::ops::{bias_add_last, geglu, layer_norm};

fn f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

#[test]
fn fused_layer_norm_matches_composed() {
    // 3000 rows of 24: several parallel tasks of the fused kernel.
    let (x, w, b) = (det(&[3, 1000, 24], 1).affine(3.0, 0.5).unwrap(), det(&[24], 2), det(&[24], 3));
    for dt in [DType::F64, DType::F32] {
        let c = |t: &Tensor| t.to_dtype(dt).unwrap();
        let fused = layer_norm(&c(&x), &c(&w), Some(&c(&b)), 1e-5).unwrap();
        let composed = layer_norm_composed(&c(&x), &c(&w), Some(&c(&b)), 1e-5).unwrap();
        let tol = if dt == DType::F64 { 1e-12 } else { 1e-5 };
        assert!(max_diff(&fused, &composed) < tol, "{dt:?}: {}", max_diff(&fused, &composed));
        let no_bias = layer_norm(&c(&x), &c(&w), None, 1e-5).unwrap();
        let want = layer_norm_composed(&c(&x), &c(&w), None, 1e-5).unwrap();
        assert!(max_diff(&no_bias, &want) < tol);
    }
}

/// Gradients of `project(f(inputs))` for each input, by candle's backward.
fn grads_of(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let store = project(&f(&ts).unwrap(), 99).unwrap().backward().unwrap();
    vars.iter().map(|v| store.get(v.as_tensor()).unwrap().clone()).collect()
}

/// The fused and composed backward agree on shapes of many parallel tasks.
fn assert_same_grads(inputs: &[Tensor], fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>, composed: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>) {
    for (i, (a, b)) in grads_of(inputs, fused).iter().zip(grads_of(inputs, composed)).enumerate() {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1.0);
        assert!(max_diff(a, &b) < 1e-11 * scale, "input {i}: {}", max_diff(a, &b));
    }
}

#[test]
fn fused_layer_norm_gradients() {
    let (x, w, b) = ((det(&[2, 3, 5], 4) * 2.0).unwrap(), det(&[5], 5), det(&[5], 6));
    assert_grads(&[x, w, b], |t| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5));
    // 4000 rows of 24 (14 parallel tasks, partial sums of dgamma / dbeta).
    let big = [(det(&[4, 1000, 24], 7) * 2.0).unwrap(), det(&[24], 8), det(&[24], 9)];
    assert_same_grads(&big, |t| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5), |t| layer_norm_composed(&t[0], &t[1], Some(&t[2]), 1e-5));
}

#[test]
fn fused_geglu_forward_equals_composed() {
    // f64: candle's expression, bit for bit; f32: the libm-free row math.
    let p = (det(&[4, 300, 40], 10) * 3.0).unwrap();
    for (t, tol) in [(p.clone(), 0.0), (f32(&p), 2e-6 * 9.0)] {
        let (a, b) = (geglu(&t).unwrap(), geglu_composed(&t).unwrap());
        assert_eq!(a.dims(), [4, 300, 20]);
        assert!(max_diff(&a, &b) <= tol, "{:?}: {}", t.dtype(), max_diff(&a, &b));
    }
}

#[test]
fn fused_geglu_gradient_through_non_contiguous_input() {
    // A transposed input is made contiguous before the kernel.
    let p = (det(&[6, 4, 3], 11) * 3.0).unwrap();
    assert_grads(&[p], |t| geglu(&t[0].transpose(1, 2)?));
}

#[test]
fn fused_geglu_backward_matches_composed_on_many_rows() {
    let p = [(det(&[4, 500, 48], 16) * 3.0).unwrap()];
    assert_same_grads(&p, |t| geglu(&t[0]), |t| geglu_composed(&t[0]));
}

#[test]
fn bias_add_matches_broadcast_add_and_has_gradients() {
    let (y, b) = (det(&[3, 2000, 7], 12), det(&[7], 13));
    let out = bias_add_last(&y, &b).unwrap();
    assert_eq!(max_diff(&out, &y.broadcast_add(&b).unwrap()), 0.0);
    assert_grads(&[det(&[2, 5, 4], 14), det(&[4], 15)], |t| bias_add_last(&t[0], &t[1]));
    // 6000 rows of 16: several tasks in the column sums.
    let big = [det(&[6, 1000, 16], 17), det(&[16], 18)];
    assert_same_grads(&big, |t| bias_add_last(&t[0], &t[1]), |t| t[0].broadcast_add(&t[1]));
    assert!(bias_add_last(&y, &det(&[6], 1)).is_err());
}

#[test]
fn frozen_weight_linear_matches_matmul_and_gives_only_the_input_gradient() {
    use crate::ops::matmul_frozen_weight;
    let (x, w) = (det(&[37, 24], 21), det(&[10, 24], 22));
    for dt in [DType::F64, DType::F32] {
        let c = |t: &Tensor| t.to_dtype(dt).unwrap();
        let got = matmul_frozen_weight(&c(&x), &c(&w)).unwrap();
        let want = c(&x).matmul(&c(&w).t().unwrap()).unwrap();
        let tol = if dt == DType::F64 { 1e-12 } else { 1e-5 };
        assert!(max_diff(&got, &want) < tol, "{dt:?}: {}", max_diff(&got, &want));
    }
    // The input's gradient by finite differences, the weight held constant.
    let wc = w.clone();
    assert_grads(&[det(&[5, 6], 23)], move |t| matmul_frozen_weight(&t[0], &wc.narrow(1, 0, 6).unwrap()));
    // Through a graph: x tracks, the frozen weight gets no gradient at all.
    let xv = Var::from_tensor(&x).unwrap();
    let store = project(&matmul_frozen_weight(xv.as_tensor(), &w).unwrap(), 3).unwrap().backward().unwrap();
    let plain = project(&xv.as_tensor().matmul(&w.t().unwrap()).unwrap(), 3).unwrap().backward().unwrap();
    assert!(max_diff(store.get(xv.as_tensor()).unwrap(), plain.get(xv.as_tensor()).unwrap()) < 1e-12);
    // candle's matmul also computes (and keeps, under W^T's id) the weight's
    // gradient; this op stores one gradient fewer: none for the weight.
    assert!(store.get(&w).is_none(), "the frozen weight got a gradient");
    assert_eq!(store.get_ids().count() + 1, plain.get_ids().count(), "no weight gradient is computed");
    assert!(matmul_frozen_weight(&x, &det(&[10, 23], 1)).is_err());
}

#[test]
fn frozen_linear_with_bias_matches_the_composed_layer() {
    use crate::ops::linear_frozen;
    // 300 rows: the gemm splits them over threads; k = 300 crosses a
    // reduction block, where the bias-as-start order differs most.
    let (x, w, b) = (det(&[300, 300], 24), det(&[40, 300], 25), det(&[40], 26));
    for dt in [DType::F64, DType::F32] {
        let c = |t: &Tensor| t.to_dtype(dt).unwrap();
        let got = linear_frozen(&c(&x), &c(&w), Some(&c(&b))).unwrap();
        let want = c(&x).matmul(&c(&w).t().unwrap()).unwrap().broadcast_add(&c(&b)).unwrap();
        let tol = if dt == DType::F64 { 1e-12 } else { 1e-4 };
        assert!(max_diff(&got, &want) < tol, "{dt:?}: {}", max_diff(&got, &want));
    }
    // The input's gradient by finite differences; weight and bias constant.
    let (wc, bc) = (w.narrow(1, 0, 6).unwrap(), b.clone());
    assert_grads(&[det(&[5, 6], 27)], move |t| linear_frozen(&t[0], &wc, Some(&bc)));
    // Through a graph: only x gets a gradient, the same as the composed one's.
    let xv = Var::from_tensor(&x).unwrap();
    let store = project(&linear_frozen(xv.as_tensor(), &w, Some(&b)).unwrap(), 3).unwrap().backward().unwrap();
    let plain = project(&xv.as_tensor().matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap(), 3).unwrap().backward().unwrap();
    assert!(max_diff(store.get(xv.as_tensor()).unwrap(), plain.get(xv.as_tensor()).unwrap()) < 1e-12);
    assert!(store.get(&w).is_none() && store.get(&b).is_none(), "a frozen operand got a gradient");
    // A bias of the wrong size names both shapes.
    let err = linear_frozen(&x, &w, Some(&det(&[39], 1))).unwrap_err().to_string();
    assert!(err.contains("[39]") && err.contains("[40, 300]"), "{err}");
}

#[test]
fn fused_geglu_f32_gradients_match_f64() {
    // The f32 rows run the libm-free erf/exp; their gradient is the f64
    // one to f32 accuracy.
    let p = (det(&[2, 300, 40], 31) * 3.0).unwrap();
    let g64 = grads_of(std::slice::from_ref(&p), |t| geglu(&t[0]));
    let g32 = grads_of(&[f32(&p)], |t| geglu(&t[0]));
    let scale = g64[0].abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(max_diff(&g32[0], &g64[0]) < 1e-5 * scale, "{}", max_diff(&g32[0], &g64[0]));
}
