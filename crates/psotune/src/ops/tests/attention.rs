use candle_core::{DType, Result, Tensor, Var};

use super::torch_ref::ATTENTION;
use super::{assert_close, assert_grads, max_diff};
use crate::ops::gradcheck::{det_tensor as det, project};
use crate::ops::{attention, attention_with_limit, softmax_last_dim};

/// q [4, 5, 3], k [4, 6, 3], v [4, 6, 4]: 120 scores in all.
fn qkv() -> [Tensor; 3] {
    [det(&[4, 5, 3], 15), det(&[4, 6, 3], 16), det(&[4, 6, 4], 17)]
}

const SCALE: f64 = 0.5773502691896258; // 3^-0.5

/// Limits that exercise every plan: one row of one entry per chunk (1, 6),
/// rows split (12: 2 rows), whole entries (30: 1 entry, 60: 2 entries), an
/// uneven last chunk (90: 3 entries, then 1), single shot (120 and up).
const LIMITS: [usize; 8] = [1, 6, 12, 30, 60, 90, 120, 1 << 24];

/// The textbook composition, differentiated by candle's autograd.
fn plain(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?.matmul(v)
}

#[test]
fn attention_matches_torch() {
    let [q, k, v] = qkv();
    assert_close(&attention(&q, &k, &v, SCALE).unwrap(), &ATTENTION, 1e-12);
}

#[test]
fn chunked_equals_single_shot() {
    for dt in [DType::F64, DType::F32] {
        let [q, k, v] = qkv().map(|t| t.to_dtype(dt).unwrap());
        let full = plain(&q, &k, &v, SCALE).unwrap();
        for limit in LIMITS {
            let out = attention_with_limit(&q, &k, &v, SCALE, limit).unwrap();
            assert_eq!(out.dims(), [4, 5, 4]);
            assert!(max_diff(&out, &full) < 1e-6, "{dt:?} limit {limit}: {}", max_diff(&out, &full));
        }
    }
}

#[test]
fn attention_gradients_every_plan() {
    for limit in LIMITS {
        assert_grads(&qkv(), |t| attention_with_limit(&t[0], &t[1], &t[2], SCALE, limit));
    }
}

/// The upstream gradient reaches the op non-contiguous (through a transpose)
/// and q, k, v come in as views, as after the head split in a model.
#[test]
fn attention_gradients_with_strided_tensors() {
    let inputs = [det(&[4, 3, 5], 15), det(&[4, 3, 6], 16), det(&[4, 6, 4], 17)];
    assert_grads(&inputs, |t| {
        let (q, k) = (t[0].transpose(1, 2)?, t[1].transpose(1, 2)?);
        attention_with_limit(&q, &k, &t[2], SCALE, 12)?.transpose(1, 2)
    });
}

/// In f32, the recomputing backward agrees with autograd through the plain
/// composition, for q, k and v.
#[test]
fn chunked_backward_matches_autograd_f32() {
    let vars = qkv().map(|t| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap());
    let [q, k, v] = vars.each_ref().map(|v| v.as_tensor().clone());
    let want = project(&plain(&q, &k, &v, SCALE).unwrap(), 99).unwrap().backward().unwrap();
    for limit in [6, 12, 60, 1 << 24] {
        let got = project(&attention_with_limit(&q, &k, &v, SCALE, limit).unwrap(), 99).unwrap().backward().unwrap();
        for var in &vars {
            let d = max_diff(got.get(var).unwrap(), want.get(var).unwrap());
            assert!(d < 1e-5, "limit {limit}: {d:e}");
        }
    }
}

/// Without variables nothing is recorded: inference keeps no graph.
#[test]
fn attention_without_variables_records_nothing() {
    let [q, k, v] = qkv();
    assert!(!attention_with_limit(&q, &k, &v, SCALE, 12).unwrap().track_op());
    let qv = Var::from_tensor(&q).unwrap();
    assert!(attention_with_limit(qv.as_tensor(), &k, &v, SCALE, 12).unwrap().track_op());
}

#[test]
fn attention_rejects_mismatched_shapes() {
    let [q, k, v] = qkv();
    assert!(attention(&q, &k, &v.narrow(1, 0, 5).unwrap(), SCALE).is_err());
    assert!(attention(&q, &k.narrow(0, 0, 2).unwrap(), &v, SCALE).is_err());
    assert!(attention(&q, &k.narrow(2, 0, 2).unwrap(), &v, SCALE).is_err());
}

/// f16/bf16 attention over 4096 keys stays close to f32 on the same
/// (rounded) inputs, forward and backward; with the softmax summed in bf16
/// the output was off by ten times its own size.
#[test]
fn half_precision_attention_close_to_f32() {
    let (b, n, d) = (2, 4096, 16);
    let inputs = [det(&[b, 8, d], 1), (det(&[b, n, d], 2) * 0.3).unwrap(), det(&[b, n, d], 3)];
    for (dt, tol) in [(DType::F16, 2e-3), (DType::BF16, 1e-2)] {
        let vars = inputs.each_ref().map(|t| Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap());
        let f32s = vars.each_ref().map(|v| Var::from_tensor(&v.as_tensor().to_dtype(DType::F32).unwrap()).unwrap());
        let out = attention(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 0.25).unwrap();
        let want = attention(f32s[0].as_tensor(), f32s[1].as_tensor(), f32s[2].as_tensor(), 0.25).unwrap();
        assert_eq!(out.dtype(), dt);
        let rel = |a: &Tensor, b: &Tensor| max_diff(a, b) / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!(rel(&out, &want) < tol, "{dt:?} forward: {}", rel(&out, &want));
        let g = project(&out, 7).unwrap().backward().unwrap();
        let gw = project(&want, 7).unwrap().backward().unwrap();
        for (v, w) in vars.iter().zip(&f32s) {
            let (gv, gw) = (g.get(v).unwrap(), gw.get(w).unwrap());
            assert_eq!(gv.dtype(), dt);
            assert!(rel(gv, gw) < tol, "{dt:?} gradient: {}", rel(gv, gw));
        }
    }
}
