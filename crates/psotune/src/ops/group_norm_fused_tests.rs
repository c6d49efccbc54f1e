//! The fused group norm against the composed one (values and gradients,
//! f32) and against finite differences (f64).

use candle_core::{DType, Tensor, Var};

use super::{group_norm_fused, group_norm_silu};
use crate::ops::gradcheck::{check, det_tensor, project};
use crate::ops::{group_norm, silu};

/// (shape, groups)
const CASES: &[(&[usize], usize)] = &[(&[2, 4, 3, 5], 2), (&[1, 6, 4, 4], 3), (&[3, 4, 7], 4), (&[2, 8, 2, 3], 1), (&[2, 4], 2)];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[test]
fn group_norm_fused_gradcheck_f64() {
    for (i, &(shape, groups)) in CASES.iter().enumerate() {
        let c = shape[1];
        let seed = 20 * i as u64;
        let inputs = [det_tensor(shape, seed), det_tensor(&[c], seed + 1), det_tensor(&[c], seed + 2)];
        for fused_silu in [false, true] {
            let f = if fused_silu { group_norm_silu } else { group_norm_fused };
            let worst = check(&inputs, |t| project(&f(&t[0], groups, &t[1], &t[2], 1e-5)?, 7)).unwrap();
            assert!(worst < 1e-5, "shape {shape:?} silu {fused_silu}: relative error {worst:e}");
        }
    }
}

#[test]
fn group_norm_fused_matches_composed_f32() {
    for (i, &(shape, groups)) in CASES.iter().enumerate() {
        let c = shape[1];
        let seed = 20 * i as u64 + 5;
        let var = |t: Tensor| Var::from_tensor(&(t.to_dtype(DType::F32).unwrap() * 3.0).unwrap()).unwrap();
        let (x, w, b) = (var(det_tensor(shape, seed)), var(det_tensor(&[c], seed + 1)), var(det_tensor(&[c], seed + 2)));
        for fused_silu in [false, true] {
            let composed = group_norm(&x, groups, &w, &b, 1e-5).unwrap();
            let composed = if fused_silu { silu(&composed).unwrap() } else { composed };
            let fused = if fused_silu { group_norm_silu(&x, groups, &w, &b, 1e-5) } else { group_norm_fused(&x, groups, &w, &b, 1e-5) };
            let fused = fused.unwrap();
            let ga = project(&composed, 3).unwrap().backward().unwrap();
            let gb = project(&fused, 3).unwrap().backward().unwrap();
            let mut pairs = vec![("y", fused.clone(), composed.clone())];
            for (name, v) in [("dx", &x), ("dw", &w), ("db", &b)] {
                pairs.push((name, gb.get(v).unwrap().clone(), ga.get(v).unwrap().clone()));
            }
            for (name, got, want) in pairs {
                let d = max_abs_diff(&got, &want);
                let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                assert!(d <= 1e-5 * scale.max(1.0), "shape {shape:?} silu {fused_silu} {name}: diff {d:e}");
            }
        }
    }
}

/// f16 takes the composed path; bad shapes are errors, not panics.
#[test]
fn group_norm_fused_fallback_and_errors() {
    let x = det_tensor(&[1, 4, 3, 3], 1).to_dtype(DType::F32).unwrap();
    let (w, b) = (det_tensor(&[4], 2).to_dtype(DType::F32).unwrap(), det_tensor(&[4], 3).to_dtype(DType::F32).unwrap());
    let want = group_norm_fused(&x, 2, &w, &b, 1e-5).unwrap();
    let h = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    let half = group_norm_fused(&h(&x), 2, &h(&w), &h(&b), 1e-5).unwrap();
    assert!(max_abs_diff(&half.to_dtype(DType::F32).unwrap(), &want) < 1e-2);
    assert!(group_norm_fused(&x, 3, &w, &b, 1e-5).is_err());
    assert!(group_norm_fused(&x, 2, &det_tensor(&[3], 2).to_dtype(DType::F32).unwrap(), &b, 1e-5).is_err());
}
