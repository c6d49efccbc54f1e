//! Every CPU kernel on every SIMD path this CPU runs (`PSOTUNE_SIMD`), f32,
//! forward and backward, on shapes larger than a parallel task. The
//! loop kernels (norms, GEGLU, bias, convolution's im2col / col2im /
//! transpose) evaluate the same expressions in every build (Rust does not
//! contract a * b + c into an FMA, and their sums keep a fixed lane order),
//! so they must agree bit for bit; attention's AVX builds use FMA and the
//! portable one does not, so those agree within rounding. The CI also runs
//! the whole op test suite under `PSOTUNE_SIMD` for each path.

use candle_core::{DType, Tensor, Var};

use crate::ops::cpu::simd::{with_path, Path};
use crate::ops::gradcheck::{det_tensor as det, project};
use crate::ops::{attention_heads, bias_add_last, conv2d_bias, geglu, group_norm_fused, group_norm_silu, layer_norm};

/// The output and the input gradients of `f` (through a fixed projection).
fn out_and_grads(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>) -> Vec<Vec<f32>> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let store = project(&y, 7).unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    std::iter::once(flat(&y)).chain(vars.iter().map(|v| flat(store.get(v.as_tensor()).unwrap()))).collect()
}

type Case = (&'static str, Vec<Tensor>, Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>);

fn cases() -> Vec<Case> {
    let x = det(&[3, 64, 9, 11], 1).affine(3.0, 0.2).unwrap();
    let (gw, gb) = (det(&[64], 2).affine(1.0, 1.0).unwrap(), det(&[64], 3));
    let rows = det(&[5, 333, 40], 4).affine(2.0, -0.3).unwrap();
    let (lw, lb) = (det(&[40], 5).affine(1.0, 1.0).unwrap(), det(&[40], 6));
    let conv_x = det(&[2, 5, 13, 10], 7);
    let (cw, cb) = (det(&[6, 5, 3, 3], 8), det(&[6], 9));
    let q = det(&[2, 70, 2 * 24], 10).affine(2.0, 0.0).unwrap();
    let k = det(&[2, 45, 2 * 24], 11).affine(2.0, 0.0).unwrap();
    let v = det(&[2, 45, 2 * 24], 12);
    vec![
        ("group norm", vec![x.clone(), gw.clone(), gb.clone()], Box::new(|t| group_norm_fused(&t[0], 8, &t[1], &t[2], 1e-5))),
        ("group norm + silu", vec![x, gw, gb], Box::new(|t| group_norm_silu(&t[0], 8, &t[1], &t[2], 1e-5))),
        ("layer norm", vec![rows.clone(), lw, lb.clone()], Box::new(|t| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5))),
        ("geglu", vec![rows.clone()], Box::new(|t| geglu(&t[0]))),
        ("bias add", vec![rows, lb], Box::new(|t| bias_add_last(&t[0], &t[1]))),
        ("conv 3x3 pad 1", vec![conv_x.clone(), cw.clone(), cb.clone()], Box::new(|t| conv2d_bias(&t[0], &t[1], Some(&t[2]), 1, 1))),
        ("conv 3x3 stride 2", vec![conv_x, cw, cb], Box::new(|t| conv2d_bias(&t[0], &t[1], Some(&t[2]), 2, 1))),
        ("attention", vec![q, k, v], Box::new(|t| attention_heads(&t[0], &t[1], &t[2], 2, 0.2))),
    ]
}

#[test]
fn every_simd_path_agrees() {
    let paths = Path::supported();
    for (name, inputs, f) in cases() {
        let runs: Vec<(Path, Vec<Vec<f32>>)> = paths.iter().map(|&p| (p, with_path(p, || out_and_grads(&inputs, &*f)).unwrap())).collect();
        let (p0, want) = &runs[0];
        for (p, got) in &runs[1..] {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                if name == "attention" && (*p == Path::Portable || *p0 == Path::Portable) {
                    let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
                    assert!(worst < 1e-5, "{name}: {p} against {p0}, tensor {i}: {worst:e}");
                    // Not the same bits: the op really ran another build
                    // (plain multiply-adds round twice, FMA once).
                    assert!(g != w, "{name}: {p} gave {p0}'s bits in tensor {i}; did the path switch?");
                } else {
                    let first = g.iter().zip(w).position(|(a, b)| a.to_bits() != b.to_bits());
                    assert!(first.is_none(), "{name}: {p} differs from {p0} in tensor {i} at element {first:?}");
                }
            }
        }
    }
}
