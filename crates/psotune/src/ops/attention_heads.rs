//! Multi-head attention straight from the projections' [B, L, H*D] layout.
//!
//! diffusers splits heads with `view(B, L, H, D).transpose(1, 2)`, and the
//! composed path (`attention` on [B*H, L, D]) needs those views contiguous:
//! q, k and v are copied before attention, the output is copied back after,
//! and the backward repeats all four copies in reverse. Here each task (one
//! head of one image, or a run of its query rows) packs only what its tiles
//! read (K and V of that head, transposed where the product wants it, head
//! widths padded to 16 and keys to 32; see `cpu::attn_tiles`) and writes
//! its rows of the output and gradients back into the [B, L, H*D] layout.
//! Per head and run of query rows, with S = q k^T scale and P = softmax(S):
//!
//!   forward   O = P V
//!   backward  (P recomputed)  dV += P^T dO,  dP = dO V^T,
//!             dS = P (dP - rowsum(P dP)) scale,  dQ = dS K,  dK += dS^T Q
//!
//! Memory stays bounded as in `attention`: a thread holds the scores of at
//! most `max(max_elems, M)` entries at once (one run of query rows of one
//! head); the backward keeps q, k, v and two numbers per score row (the
//! softmax's max and sum).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{attention_with_limit, ATTENTION_CHUNK_ELEMS};
use super::cpu::attn_tiles::{
    add_transposed, exp_row, key_stride, pack_rows, pack_transposed, round_up, row_max, scores, softmax_grad_row, unpack_rows,
    weighted_rows, KEY_BLOCK, LANES,
};
use super::cpu::lanes::Lanes;
use super::cpu::real::Real;
use super::cpu::simd::Simd;
use kernels::Kernels;
use super::cpu::{slice_of, with_slice};

/// q: [B, N, H*D], k: [B, M, H*D], v: [B, M, H*Dv] -> [B, N, H*Dv]: the
/// `heads` heads of diffusers' `AttnProcessor2_0`, head h in columns
/// h*D..(h+1)*D, `softmax(q_h k_h^T * scale) v_h`. f32 / f64 on the CPU run
/// the kernel of this module; other dtypes and devices split the heads and
/// call [`super::attention`] (f16 / bf16 computed in f32 there).
pub fn attention_heads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    attention_heads_with_limit(q, k, v, heads, scale, ATTENTION_CHUNK_ELEMS)
}

/// [`attention_heads`] with an explicit bound on score elements per chunk.
pub fn attention_heads_with_limit(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64, max_elems: usize) -> Result<Tensor> {
    let (b, n, hd) = q.dims3()?;
    let (bk, m, hdk) = k.dims3()?;
    let (bv, mv, hdv) = v.dims3()?;
    if heads == 0 || bk != b || bv != b || hdk != hd || mv != m || hd % heads != 0 || hdv % heads != 0 {
        candle_core::bail!("attention: {heads} heads do not fit q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims());
    }
    if b * n * m == 0 || hd == 0 {
        candle_core::bail!("attention: empty input q {:?}, k {:?}", q.dims(), k.dims());
    }
    let dt = q.dtype();
    let fast = q.device().is_cpu() && matches!(dt, DType::F32 | DType::F64) && k.dtype() == dt && v.dtype() == dt;
    let g = HeadsGeom { b, n, m, heads, d: hd / heads, dv: hdv / heads };
    if !fast {
        return composed(q, k, v, &g, scale, max_elems);
    }
    let rows = chunk_rows(&g, max_elems);
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, HeadsOp { g, scale, rows, stats: Mutex::new(None), simd: Simd::active() })
}

/// Split heads, [`attention_with_limit`], merge heads (diffusers' layout
/// changes, as copies).
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, g: &HeadsGeom, scale: f64, max_elems: usize) -> Result<Tensor> {
    let split = |t: &Tensor, d: usize| -> Result<Tensor> {
        let l = t.dim(1)?;
        t.reshape((g.b, l, g.heads, d))?.transpose(1, 2)?.contiguous()?.reshape((g.b * g.heads, l, d))
    };
    let out = attention_with_limit(&split(q, g.d)?, &split(k, g.d)?, &split(v, g.dv)?, scale, max_elems)?;
    out.reshape((g.b, g.heads, g.n, g.dv))?.transpose(1, 2)?.reshape((g.b, g.n, g.heads * g.dv))
}

#[derive(Debug, Clone, Copy)]
struct HeadsGeom {
    b: usize,
    n: usize,
    m: usize,
    heads: usize,
    d: usize,
    dv: usize,
}

impl HeadsGeom {
    fn q_len(&self) -> usize {
        self.n * self.heads * self.d
    }
    fn k_len(&self) -> usize {
        self.m * self.heads * self.d
    }
    fn v_len(&self) -> usize {
        self.m * self.heads * self.dv
    }
    fn o_len(&self) -> usize {
        self.n * self.heads * self.dv
    }
    /// The tiles' padded sizes (see `cpu::attn_tiles`).
    fn padded(&self) -> Padded {
        let mp = round_up(self.m, KEY_BLOCK);
        Padded { mp, ld: key_stride(mp), dp: round_up(self.d, LANES), dvp: round_up(self.dv, LANES) }
    }
}

/// Keys padded to whole key blocks, the row stride of packed keys and
/// scores, and head widths padded to whole vectors.
#[derive(Clone, Copy)]
struct Padded {
    mp: usize,
    ld: usize,
    dp: usize,
    dvp: usize,
}

struct HeadsOp {
    g: HeadsGeom,
    scale: f64,
    /// Query rows per score chunk.
    rows: usize,
    /// The forward's (max scaled score, sum of exponentials) of every score
    /// row, [B, heads, N]: the backward recomputes the probabilities as
    /// exp(s scale - lse), lse = max + ln(sum), in one pass (candle keeps
    /// this op in the graph until the backward). The logarithm waits for
    /// the backward: a sample never needs it.
    stats: Mutex<Option<Vec<[f64; 2]>>>,
    /// The SIMD path, read where the op is made: the forward and the
    /// backward run the same build, whatever thread runs them.
    simd: Simd,
}

/// Score elements per chunk that keep the probabilities and their
/// gradient (two chunks of 256 KiB in f32) inside a core's L2 cache
/// (1 MiB here; 1 << 14 to 1 << 17 measured within 5% of each other).
const CACHE_CHUNK_ELEMS: usize = 1 << 16;

/// Query rows per chunk: cache-sized, within the caller's memory bound.
fn chunk_rows(g: &HeadsGeom, max_elems: usize) -> usize {
    let (n, ld) = (g.n, g.padded().ld);
    // Whole tiles on every path (8 rows on AVX-512, 6 on AVX2, 3 portable:
    // multiples of 24): leftover rows run smaller tiles, slower per score.
    let cached = (CACHE_CHUNK_ELEMS / ld / 24 * 24).max(8);
    (max_elems / ld).min(cached).clamp(1, n)
}

/// One task: the query rows `r0..r1` of head `h` of image `b`.
#[derive(Clone, Copy)]
struct Task {
    b: usize,
    h: usize,
    r0: usize,
    r1: usize,
}

/// What a forward task returns: packed output rows and their softmax
/// statistics (max scaled score, sum of exponentials).
type HeadOut<T> = (Vec<T>, Vec<[T; 2]>);

/// What a backward task returns: packed dq rows, and its share of dk, dv.
type HeadGrads<T> = (Vec<T>, Vec<T>, Vec<T>);

/// The image's slice of a [B, L, W] tensor.
fn image<T>(t: &[T], b: usize, len: usize) -> &[T] {
    &t[b * len..][..len]
}

impl HeadsOp {
    /// Tasks: every (image, head), split into row ranges when there are
    /// fewer pairs than twice the threads (one image of SD at batch 1).
    fn tasks(&self) -> Vec<Task> {
        let g = &self.g;
        let threads = rayon::current_num_threads().max(1);
        let pairs = g.b * g.heads;
        let split = (2 * threads).div_ceil(pairs).clamp(1, g.n.div_ceil(8).max(1));
        let per = round_up(g.n.div_ceil(split), 8);
        let mut out = Vec::with_capacity(pairs * split);
        for b in 0..g.b {
            for h in 0..g.heads {
                for r0 in (0..g.n).step_by(per) {
                    out.push(Task { b, h, r0, r1: (r0 + per).min(g.n) });
                }
            }
        }
        out
    }

    /// Packed output rows (`r1 - r0` x padded dv) of one task, and each
    /// row's softmax statistics (for the backward).
    #[inline(always)]
    fn forward_task<T: Real, V: Lanes<T>>(&self, q: &[T], k: &[T], v: &[T], t: Task) -> HeadOut<T> {
        let g = &self.g;
        let (hd, hdv) = (g.heads * g.d, g.heads * g.dv);
        let Padded { mp, ld, dvp, .. } = g.padded();
        let (qb, kb, vb) = (image(q, t.b, g.q_len()), image(k, t.b, g.k_len()), image(v, t.b, g.v_len()));
        let kt = pack_transposed(kb, hd, t.h * g.d, g.m, g.d, ld);
        let vp = pack_rows(vb, hdv, t.h * g.dv, g.m, g.dv, dvp);
        let mut out = vec![T::zero(); (t.r1 - t.r0) * dvp];
        let mut stats = vec![[T::zero(); 2]; t.r1 - t.r0];
        let mut p = vec![T::zero(); self.rows * ld];
        let scale = T::from_f64(self.scale);
        for r in (t.r0..t.r1).step_by(self.rows) {
            let rl = self.rows.min(t.r1 - r);
            scores::<T, V>(&mut p, ld, &qb[r * hd + t.h * g.d..], hd, rl, g.d, &kt, ld, mp);
            // Unnormalised exponentials; each output row is divided by its
            // sum after the product (dv values instead of m).
            let stats = &mut stats[r - t.r0..][..rl];
            for (row, st) in p.chunks_mut(ld).zip(stats.iter_mut()) {
                let row = &mut row[..mp];
                let shift = row_max::<T, V>(row, g.m) * scale;
                *st = [shift, exp_row::<T, V>(row, g.m, scale, shift)];
            }
            let ob = &mut out[(r - t.r0) * dvp..];
            weighted_rows::<T, V>(ob, &p, ld, rl, g.m, &vp, dvp);
            for (orow, st) in ob.chunks_mut(dvp).zip(stats.iter()) {
                let inv = T::one() / st[1];
                for o in orow.iter_mut() {
                    *o *= inv;
                }
            }
        }
        (out, stats)
    }

    /// One task's backward: (P recomputed) dV += P^T dO, dP = dO V^T,
    /// dS = P (dP - rowsum(P dP)) scale, dQ = dS K, dK += dS^T Q.
    #[inline(always)]
    fn backward_task<T: Real, V: Lanes<T>>(&self, q: &[T], k: &[T], v: &[T], go: &[T], lse: &[T], t: Task) -> HeadGrads<T> {
        let g = &self.g;
        let (hd, hdv) = (g.heads * g.d, g.heads * g.dv);
        let Padded { mp, ld, dp, dvp } = g.padded();
        let (qb, kb, vb) = (image(q, t.b, g.q_len()), image(k, t.b, g.k_len()), image(v, t.b, g.v_len()));
        let rows = t.r1 - t.r0;
        let kt = pack_transposed(kb, hd, t.h * g.d, g.m, g.d, ld);
        let kp = pack_rows(kb, hd, t.h * g.d, g.m, g.d, dp);
        let vt = pack_transposed(vb, hdv, t.h * g.dv, g.m, g.dv, ld);
        let qp = pack_rows(&qb[t.r0 * hd..], hd, t.h * g.d, rows, g.d, dp);
        let gop = pack_rows(&image(go, t.b, g.o_len())[t.r0 * hdv..], hdv, t.h * g.dv, rows, g.dv, dvp);
        let (mut dq, mut dk, mut dv) = (vec![T::zero(); rows * dp], vec![T::zero(); g.m * dp], vec![T::zero(); g.m * dvp]);
        let mut p = vec![T::zero(); self.rows * ld];
        let mut ds = vec![T::zero(); self.rows * ld];
        let scale = T::from_f64(self.scale);
        for r in (0..rows).step_by(self.rows) {
            let rl = self.rows.min(rows - r);
            scores::<T, V>(&mut p, ld, &qb[(t.r0 + r) * hd + t.h * g.d..], hd, rl, g.d, &kt, ld, mp);
            for (row, &l) in p.chunks_mut(ld).zip(&lse[r..]).take(rl) {
                exp_row::<T, V>(&mut row[..mp], g.m, scale, l);
            }
            add_transposed::<T, V>(&mut dv, &p, ld, rl, g.m, &gop[r * dvp..], dvp);
            scores::<T, V>(&mut ds, ld, &gop[r * dvp..], dvp, rl, g.dv, &vt, ld, mp);
            for (dr, pr) in ds.chunks_mut(ld).zip(p.chunks(ld)).take(rl) {
                softmax_grad_row::<T, V>(&mut dr[..mp], &pr[..mp], scale);
            }
            weighted_rows::<T, V>(&mut dq[r * dp..], &ds, ld, rl, g.m, &kp, dp);
            add_transposed::<T, V>(&mut dk, &ds, ld, rl, g.m, &qp[r * dp..], dp);
        }
        (dq, dk, dv)
    }

    /// The output, and every score row's (max scaled score, sum) in
    /// [B, heads, N] order.
    fn forward<T: Kernels>(&self, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<[f64; 2]>) {
        let g = self.g;
        let parts: Vec<(Task, HeadOut<T>)> = self.tasks().into_par_iter().map(|t| (t, T::forward(self, q, k, v, t))).collect();
        let (hdv, dvp) = (g.heads * g.dv, g.padded().dvp);
        let mut out = vec![T::zero(); g.b * g.o_len()];
        let mut stats = vec![[0f64; 2]; g.b * g.heads * g.n];
        for (t, (part, part_stats)) in parts {
            let ob = &mut out[t.b * g.o_len()..][..g.o_len()];
            unpack_rows(&mut ob[t.r0 * hdv..], hdv, t.h * g.dv, &part, g.dv, dvp, false);
            let at = (t.b * g.heads + t.h) * g.n + t.r0;
            for (d, s) in stats[at..].iter_mut().zip(&part_stats) {
                *d = [s[0].to_f64(), s[1].to_f64()];
            }
        }
        (out, stats)
    }

    /// [`Self::forward`], keeping the statistics for the backward.
    fn forward_keep<T: Kernels>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let (out, stats) = self.forward(q, k, v);
        if let Ok(mut l) = self.stats.lock() {
            *l = Some(stats);
        }
        out
    }

    /// (dq, dk, dv) from q, k, v and the output gradient `go`.
    fn backward<T: Kernels>(&self, q: &[T], k: &[T], v: &[T], go: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let g = self.g;
        let kept = self.stats.lock().ok().and_then(|l| l.clone());
        // Without kept statistics (not through candle's graph, which runs
        // `cpu_fwd` first, or a poisoned lock) the forward recomputes them.
        let stats = kept.unwrap_or_else(|| self.forward(q, k, v).1);
        let lse: Vec<T> = stats.iter().map(|&[max, sum]| T::from_f64(max + sum.ln())).collect();
        let parts: Vec<(Task, HeadGrads<T>)> = self
            .tasks()
            .into_par_iter()
            .map(|t| (t, T::backward(self, q, k, v, go, &lse[(t.b * g.heads + t.h) * g.n..][..g.n][t.r0..t.r1], t)))
            .collect();
        let (hd, hdv) = (g.heads * g.d, g.heads * g.dv);
        let Padded { dp, dvp, .. } = g.padded();
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        for (t, (pq, pk, pv)) in parts {
            unpack_rows(&mut dq[t.b * g.q_len() + t.r0 * hd..], hd, t.h * g.d, &pq, g.d, dp, false);
            unpack_rows(&mut dk[t.b * g.k_len()..][..g.k_len()], hd, t.h * g.d, &pk, g.d, dp, true);
            unpack_rows(&mut dv[t.b * g.v_len()..][..g.v_len()], hdv, t.h * g.dv, &pv, g.dv, dvp, true);
        }
        (dq, dk, dv)
    }

    fn bwd_typed<T: Kernels>(&self, q: &Tensor, k: &Tensor, v: &Tensor, go: &Tensor) -> Result<[Tensor; 3]> {
        let go = go.contiguous()?;
        let (dq, dk, dv) = with_slice::<T, _>(q, |qs| {
            with_slice::<T, _>(k, |ks| with_slice::<T, _>(v, |vs| with_slice::<T, _>(&go, |gs| Ok(self.backward(qs, ks, vs, gs)))))
        })?;
        Ok([
            Tensor::from_vec(dq, q.shape(), q.device())?,
            Tensor::from_vec(dk, k.shape(), k.device())?,
            Tensor::from_vec(dv, v.shape(), v.device())?,
        ])
    }
}

/// The tasks as [`Kernel`]s, compiled for every SIMD path; f64 (gradient
/// checks) always takes plain lanes.
mod kernels {
    use super::{HeadGrads, HeadOut, HeadsOp, Real, Task};
    use crate::ops::cpu::lanes::Plain;
    use crate::ops::cpu::simd::{Isa, Kernel};

    /// The f32 / f64 entry points of the tasks.
    pub trait Kernels: Real {
        /// Output rows and their softmax statistics.
        fn forward(op: &HeadsOp, q: &[Self], k: &[Self], v: &[Self], t: Task) -> HeadOut<Self>;
        fn backward(op: &HeadsOp, q: &[Self], k: &[Self], v: &[Self], go: &[Self], lse: &[Self], t: Task) -> HeadGrads<Self>;
    }

    impl Kernels for f64 {
        fn forward(op: &HeadsOp, q: &[f64], k: &[f64], v: &[f64], t: Task) -> HeadOut<f64> {
            op.forward_task::<f64, Plain<f64>>(q, k, v, t)
        }
        fn backward(op: &HeadsOp, q: &[f64], k: &[f64], v: &[f64], go: &[f64], lse: &[f64], t: Task) -> HeadGrads<f64> {
            op.backward_task::<f64, Plain<f64>>(q, k, v, go, lse, t)
        }
    }

    struct Forward<'a> {
        op: &'a HeadsOp,
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
        t: Task,
    }

    impl Kernel for Forward<'_> {
        type Output = HeadOut<f32>;
        #[inline(always)]
        fn run<I: Isa>(self) -> HeadOut<f32> {
            self.op.forward_task::<f32, I::F32>(self.q, self.k, self.v, self.t)
        }
    }

    struct Backward<'a> {
        op: &'a HeadsOp,
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
        go: &'a [f32],
        lse: &'a [f32],
        t: Task,
    }

    impl Kernel for Backward<'_> {
        type Output = HeadGrads<f32>;
        #[inline(always)]
        fn run<I: Isa>(self) -> HeadGrads<f32> {
            self.op.backward_task::<f32, I::F32>(self.q, self.k, self.v, self.go, self.lse, self.t)
        }
    }

    impl Kernels for f32 {
        fn forward(op: &HeadsOp, q: &[f32], k: &[f32], v: &[f32], t: Task) -> HeadOut<f32> {
            op.simd.run(Forward { op, q, k, v, t })
        }
        fn backward(op: &HeadsOp, q: &[f32], k: &[f32], v: &[f32], go: &[f32], lse: &[f32], t: Task) -> HeadGrads<f32> {
            op.simd.run(Backward { op, q, k, v, go, lse, t })
        }
    }
}

impl CustomOp3 for HeadsOp {
    fn name(&self) -> &'static str {
        "psotune-attention-heads"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.forward_keep(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            DType::F64 => CpuStorage::F64(self.forward_keep(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            d => candle_core::bail!("attention: no CPU kernel for {d:?}"),
        };
        Ok((storage, Shape::from((g.b, g.n, g.heads * g.dv))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _out: &Tensor, go: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dq, dk, dv] = match q.dtype() {
            DType::F32 => self.bwd_typed::<f32>(q, k, v, go)?,
            DType::F64 => self.bwd_typed::<f64>(q, k, v, go)?,
            d => candle_core::bail!("attention: no CPU kernel for {d:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
#[path = "attention_heads_tests.rs"]
mod tests;
