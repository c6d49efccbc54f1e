//! Multi-head attention straight from the projections' [B, L, H*D] layout.
//!
//! diffusers splits heads with `view(B, L, H, D).transpose(1, 2)`, and the
//! composed path (`attention` on [B*H, L, D]) needs those views contiguous:
//! q, k and v are copied before attention, the output is copied back after,
//! and the backward repeats all four copies in reverse. Here the products
//! read each head as a strided matrix (row stride H*D) and write the output
//! and the gradients into the [B, L, H*D] layout directly, so no permuted
//! copy is ever made. Per head and run of query rows, with S = q k^T scale
//! and P = softmax(S):
//!
//!   forward   O = P V
//!   backward  (P recomputed)  dV += P^T dO,  dP = dO V^T,
//!             dS = P (dP - rowsum(P dP)) scale,  dQ = dS K,  dK += dS^T Q
//!
//! Memory stays bounded as in `attention`: a thread holds the scores of at
//! most `max(max_elems, M)` entries at once (one run of query rows of one
//! head); nothing but q, k, v is kept for the backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{attention_with_limit, ATTENTION_CHUNK_ELEMS};
use super::cpu::gemm::{matmul, Mat};
use super::cpu::real::Real;
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
    let rows = (max_elems / m).clamp(1, n);
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, HeadsOp { g, scale, rows })
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
}

struct HeadsOp {
    g: HeadsGeom,
    scale: f64,
    /// Query rows per score chunk.
    rows: usize,
}

/// Images run on separate threads (products single-threaded) when there
/// are enough of them; otherwise each product gets every thread.
fn per_image(b: usize) -> (bool, usize) {
    let threads = rayon::current_num_threads().max(1);
    let per = b >= threads && threads > 1;
    (per, if per { 1 } else { threads })
}

/// Row-wise in place: s <- softmax(s * scale) over rows of length `m`.
fn softmax_rows<T: Real>(s: &mut [T], m: usize, scale: T) {
    for row in s.chunks_mut(m) {
        T::softmax_row(row, scale);
    }
}

impl HeadsOp {
    /// The row chunks (start, len) of the queries.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n, step) = (self.g.n, self.rows.max(1));
        (0..n).step_by(step).map(move |r| (r, step.min(n - r)))
    }

    /// P for query rows `r0..r0 + rl` of head `h` of one image into `p`.
    fn probs<T: Real>(&self, qb: &[T], kb: &[T], h: usize, (r0, rl): (usize, usize), p: &mut [T], threads: usize) {
        let g = &self.g;
        let hd = g.heads * g.d;
        let qm = Mat::rows(&qb[r0 * hd + h * g.d..], rl, g.d, hd);
        let kt = Mat::transposed(&kb[h * g.d..], g.d, g.m, hd);
        matmul(&mut p[..rl * g.m], g.m, qm, kt, false, threads);
        softmax_rows(&mut p[..rl * g.m], g.m, T::from_f64(self.scale));
    }

    fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let g = self.g;
        let (per, threads) = per_image(g.b);
        let mut out = vec![T::zero(); g.b * g.o_len()];
        let hdv = g.heads * g.dv;
        let image = |b: usize, ob: &mut [T]| {
            let (qb, kb, vb) = (&q[b * g.q_len()..][..g.q_len()], &k[b * g.k_len()..][..g.k_len()], &v[b * g.v_len()..][..g.v_len()]);
            let mut p = vec![T::zero(); self.rows * g.m];
            for h in 0..g.heads {
                for (r0, rl) in self.chunks() {
                    self.probs(qb, kb, h, (r0, rl), &mut p, threads);
                    let vm = Mat::rows(&vb[h * g.dv..], g.m, g.dv, hdv);
                    matmul(&mut ob[r0 * hdv + h * g.dv..], hdv, Mat::rows(&p, rl, g.m, g.m), vm, false, threads);
                }
            }
        };
        if per {
            out.par_chunks_mut(g.o_len()).enumerate().for_each(|(b, ob)| image(b, ob));
        } else {
            out.chunks_mut(g.o_len()).enumerate().for_each(|(b, ob)| image(b, ob));
        }
        out
    }

    /// (dq, dk, dv) from q, k, v and the output gradient `go`.
    fn backward<T: Real>(&self, q: &[T], k: &[T], v: &[T], go: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let g = self.g;
        let (per, threads) = per_image(g.b);
        let (hd, hdv) = (g.heads * g.d, g.heads * g.dv);
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        let scale = T::from_f64(self.scale);
        let image = |b: usize, dqb: &mut [T], dkb: &mut [T], dvb: &mut [T]| {
            let (qb, kb, vb) = (&q[b * g.q_len()..][..g.q_len()], &k[b * g.k_len()..][..g.k_len()], &v[b * g.v_len()..][..g.v_len()]);
            let gob = &go[b * g.o_len()..][..g.o_len()];
            let mut p = vec![T::zero(); self.rows * g.m];
            let mut ds = vec![T::zero(); self.rows * g.m];
            for h in 0..g.heads {
                for (r0, rl) in self.chunks() {
                    self.probs(qb, kb, h, (r0, rl), &mut p, threads);
                    let gom = Mat::rows(&gob[r0 * hdv + h * g.dv..], rl, g.dv, hdv);
                    // dV_h += P^T dO
                    matmul(&mut dvb[h * g.dv..], hdv, Mat::transposed(&p, g.m, rl, g.m), gom, true, threads);
                    // dP = dO V^T, then dS = P (dP - rowsum(P dP)) scale in place.
                    matmul(&mut ds, g.m, gom, Mat::transposed(&vb[h * g.dv..], g.dv, g.m, hdv), false, threads);
                    for (dr, pr) in ds[..rl * g.m].chunks_mut(g.m).zip(p.chunks(g.m)) {
                        let mut dot = T::zero();
                        for (&d, &pv) in dr.iter().zip(pr) {
                            dot += d * pv;
                        }
                        for (d, &pv) in dr.iter_mut().zip(pr) {
                            *d = pv * (*d - dot) * scale;
                        }
                    }
                    let dsm = Mat::rows(&ds, rl, g.m, g.m);
                    // dQ = dS K (each query row once), dK_h += dS^T Q.
                    matmul(&mut dqb[r0 * hd + h * g.d..], hd, dsm, Mat::rows(&kb[h * g.d..], g.m, g.d, hd), false, threads);
                    let qm = Mat::rows(&qb[r0 * hd + h * g.d..], rl, g.d, hd);
                    matmul(&mut dkb[h * g.d..], hd, Mat::transposed(&ds, g.m, rl, g.m), qm, true, threads);
                }
            }
        };
        let work: Vec<_> = dq.chunks_mut(g.q_len()).zip(dk.chunks_mut(g.k_len())).zip(dv.chunks_mut(g.v_len())).enumerate().collect();
        if per {
            work.into_par_iter().for_each(|(b, ((a, c), e))| image(b, a, c, e));
        } else {
            work.into_iter().for_each(|(b, ((a, c), e))| image(b, a, c, e));
        }
        (dq, dk, dv)
    }

    fn bwd_typed<T: Real>(&self, q: &Tensor, k: &Tensor, v: &Tensor, go: &Tensor) -> Result<[Tensor; 3]> {
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

impl CustomOp3 for HeadsOp {
    fn name(&self) -> &'static str {
        "psotune-attention-heads"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
            DType::F64 => CpuStorage::F64(self.forward(slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?)),
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
