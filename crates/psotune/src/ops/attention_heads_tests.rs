use candle_core::{DType, Tensor};

use super::{attention_heads_with_limit, composed, HeadsGeom, HeadsOp};
use crate::ops::cpu::simd::{with_path, Path, Simd};
use crate::ops::gradcheck::{check, det_tensor as det, project};

/// (q, k, v) for `b` images, `n` queries, `m` keys, 2 heads of width 3
/// (values of width 2, to keep D and Dv apart).
fn qkv(b: usize, n: usize, m: usize) -> [Tensor; 3] {
    [(det(&[b, n, 6], 1) * 2.0).unwrap(), (det(&[b, m, 6], 2) * 2.0).unwrap(), det(&[b, m, 4], 3)]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn heads_kernel_matches_split_attention() {
    for (b, n, m) in [(1, 5, 4), (3, 7, 2), (2, 1, 9)] {
        let [q, k, v] = qkv(b, n, m);
        let g = HeadsGeom { b, n, m, heads: 2, d: 3, dv: 2 };
        let want = composed(&q, &k, &v, &g, 0.4, 1 << 20).unwrap();
        // Limits: everything at once, 2 rows per chunk, one row per chunk.
        for limit in [1 << 20, 2 * m, 1] {
            let got = attention_heads_with_limit(&q, &k, &v, 2, 0.4, limit).unwrap();
            assert_eq!(got.dims(), [b, n, 4]);
            assert!(max_diff(&got, &want) < 1e-12, "b={b} n={n} m={m} limit={limit}: {}", max_diff(&got, &want));
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let got32 = attention_heads_with_limit(&f(&q), &f(&k), &f(&v), 2, 0.4, limit).unwrap();
            assert!(max_diff(&got32.to_dtype(DType::F64).unwrap(), &want) < 1e-5);
        }
    }
}

#[test]
fn heads_kernel_gradients() {
    // One image (products split over threads) and three (one per thread),
    // whole score matrices and one query row per chunk.
    for (b, limit) in [(1, 1 << 20), (3, 1 << 20), (3, 1), (1, 8)] {
        let worst = check(&qkv(b, 3, 4), |t| project(&attention_heads_with_limit(&t[0], &t[1], &t[2], 2, 0.7, limit)?, 5)).unwrap();
        assert!(worst < 1e-5, "b={b} limit={limit}: worst relative gradient error {worst:e}");
    }
}

#[test]
fn heads_kernel_rejects_bad_shapes() {
    let [q, k, v] = qkv(2, 3, 4);
    assert!(attention_heads_with_limit(&q, &k, &v, 4, 1.0, 64).is_err());
    assert!(attention_heads_with_limit(&q, &k.narrow(0, 0, 1).unwrap(), &v, 2, 1.0, 64).is_err());
    assert!(attention_heads_with_limit(&q, &k, &v.narrow(1, 0, 3).unwrap(), 2, 1.0, 64).is_err());
    assert!(attention_heads_with_limit(&q, &k, &v, 0, 1.0, 64).is_err());
}

/// Output and (dq, dk, dv) of `project(attention)` at the inputs' dtype.
fn out_and_grads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor) -> [Tensor; 4] {
    let vars: Vec<candle_core::Var> = [q, k, v].iter().map(|t| candle_core::Var::from_tensor(t).unwrap()).collect();
    let out = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
    let grads = project(&out, 17).unwrap().backward().unwrap();
    let g = |i: usize| grads.get(&vars[i]).unwrap().to_dtype(DType::F64).unwrap();
    assert_eq!(out.dim(2).unwrap() % heads, 0);
    [out.to_dtype(DType::F64).unwrap(), g(0), g(1), g(2)]
}

#[test]
fn f32_vector_kernels_match_the_f64_reference_on_unet_shapes() {
    // Head widths 16, 24 (padded to 32), 64 and 8; 77 keys (a key tail and
    // a padded key block); one head of one image (rows split over tasks);
    // row counts off the 8-row tile.
    for (b, n, m, heads, d) in [(1, 37, 77, 1, 16), (2, 64, 64, 2, 24), (1, 19, 40, 3, 64), (3, 9, 5, 2, 8)] {
        let q = (det(&[b, n, heads * d], 11) * 2.0).unwrap();
        let k = (det(&[b, m, heads * d], 12) * 2.0).unwrap();
        let v = det(&[b, m, heads * d], 13);
        let g = HeadsGeom { b, n, m, heads, d, dv: d };
        let scale = 1.0 / (d as f64).sqrt();
        let want = out_and_grads(&q, &k, &v, heads, |q, k, v| composed(q, k, v, &g, scale, 1 << 20).unwrap());
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        // Every SIMD path the CPU runs, forward and backward in that path.
        for path in Path::supported() {
            let got = with_path(path, || {
                out_and_grads(&f(&q), &f(&k), &f(&v), heads, |q, k, v| attention_heads_with_limit(q, k, v, heads, scale, 1 << 20).unwrap())
            })
            .unwrap();
            for (i, (a, w)) in got.iter().zip(&want).enumerate() {
                let size = w.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                let diff = max_diff(a, w);
                assert!(diff <= 2e-5 * (1.0 + size), "{path}: b={b} n={n} m={m} heads={heads} d={d}, output/dq/dk/dv #{i}: {diff:e} (size {size})");
            }
        }
    }
}

#[test]
fn backward_without_kept_statistics_recomputes_them() {
    let [q, k, v] = qkv(2, 5, 4);
    let f = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (q, k, v) = (f(&q), f(&k), f(&v));
    let go: Vec<f64> = (0..2 * 5 * 4).map(|i| (i % 7) as f64 * 0.1 - 0.3).collect();
    let g = HeadsGeom { b: 2, n: 5, m: 4, heads: 2, d: 3, dv: 2 };
    let op = || HeadsOp { g, scale: 0.4, rows: 2, stats: std::sync::Mutex::new(None), simd: Simd::active() };
    let kept = op();
    kept.forward_keep(&q, &k, &v);
    assert_eq!(kept.backward(&q, &k, &v, &go), op().backward(&q, &k, &v, &go));
}
