//! Scaled dot-product attention whose memory stays bounded, in training too.
//!
//! The score matrix grows with the square of the token count: SDXL at 1024px
//! attends over 4096 tokens at its first attention level, so batch 2 x 10
//! heads x 4096 x 4096 f32 scores take 1.3 GB, and candle's autograd would
//! keep about five such tensors per layer (scores, scaled, shifted,
//! exponentials, probabilities) alive until the backward pass. So the forward
//! pass runs on detached tensors, one chunk of the score matrix at a time, and
//! a custom op attaches a backward that recomputes each chunk's probabilities
//! (FlashAttention's recipe, Dao et al. 2022, Algorithm 4, without tiling the
//! keys). The graph keeps only q, k, v and the output.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, MetalStorage, Result, Shape, Storage, Tensor, D};

use super::{compute_dtype, softmax_last_dim};

/// Upper bound on score-matrix elements materialised at once (64 MiB in f32).
pub const ATTENTION_CHUNK_ELEMS: usize = 1 << 24;

/// q: [B, Nq, D], k: [B, Nk, D], v: [B, Nk, Dv] -> [B, Nq, Dv], where `B` is
/// batch x heads: `softmax(q k^T * scale) v` (diffusers' `AttnProcessor2_0`).
/// Chunks hold at most [`ATTENTION_CHUNK_ELEMS`] scores; see
/// [`attention_with_limit`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_with_limit(q, k, v, scale, ATTENTION_CHUNK_ELEMS)
}

/// [`attention`] with an explicit chunk bound.
///
/// Memory bound: each chunk materialises at most `max(max_elems, Nk)` scores
/// (a single query row over all keys cannot be split), and a few tensors of
/// that size live at once, in the forward pass and in the backward pass
/// alike; beyond that only O(B (Nq + Nk) (D + Dv)) is kept: q, k, v, the
/// output and their gradients. A chunk is a run of whole batch x head
/// entries when an entry's Nq x Nk scores fit the bound, else a run of query
/// rows within one entry.
///
/// f16/bf16 inputs are computed in f32 and the result rounded back, as
/// PyTorch's CPU `scaled_dot_product_attention` accumulates: a softmax over
/// 4096 keys summed in bf16 is off by more than the output's own size.
pub fn attention_with_limit(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, max_elems: usize) -> Result<Tensor> {
    let (b, nq, d) = q.dims3()?;
    let (bk, nk, dk) = k.dims3()?;
    let (bv, nv, _) = v.dims3()?;
    if bk != b || bv != b || dk != d || nv != nk {
        candle_core::bail!("attention: shapes q {:?}, k {:?}, v {:?} do not match", q.dims(), k.dims(), v.dims());
    }
    if b * nq * nk == 0 {
        candle_core::bail!("attention: empty input q {:?}, k {:?}", q.dims(), k.dims());
    }
    let plan = Chunking::new(b, nq, nk, max_elems);
    let c = |t: &Tensor| t.detach().to_dtype(compute_dtype(q.dtype()))?.contiguous();
    let out = plan.forward(&c(q)?, &c(k)?, &c(v)?, scale)?.to_dtype(q.dtype())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    // The custom op hands over a clone of `out`'s whole storage, which is
    // only its data when `out` starts at offset 0 and is contiguous.
    let out = if out.is_contiguous() && out.layout().start_offset() == 0 { out } else { out.copy()? };
    q.apply_op3(k, v, AttentionBackward { scale, plan, out: Mutex::new(Some(out)) })
}

/// How the [B, Nq, Nk] score tensor is cut: `batch` entries of B times `rows`
/// query rows per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunking {
    batch: usize,
    rows: usize,
}

impl Chunking {
    fn new(b: usize, nq: usize, nk: usize, max_elems: usize) -> Self {
        let rows_fit = max_elems / nk.max(1);
        if rows_fit >= b * nq {
            Self { batch: b, rows: nq }
        } else if rows_fit >= nq {
            Self { batch: rows_fit / nq, rows: nq }
        } else {
            Self { batch: 1, rows: rows_fit.max(1) }
        }
    }

    /// (start, len) of each batch chunk and of each row chunk.
    fn spans(n: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..n).step_by(step.max(1)).map(move |s| (s, step.min(n - s)))
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, nq, _) = q.dims3()?;
        let mut per_batch = Vec::new();
        for (b0, bl) in Self::spans(b, self.batch) {
            let (qb, vb) = (q.narrow(0, b0, bl)?, v.narrow(0, b0, bl)?);
            let kt = k.narrow(0, b0, bl)?.t()?;
            let mut per_rows = Vec::new();
            for (r0, rl) in Self::spans(nq, self.rows) {
                per_rows.push(probs(&qb.narrow(1, r0, rl)?, &kt, scale)?.matmul(&vb)?);
            }
            per_batch.push(Tensor::cat(&per_rows, 1)?);
        }
        Tensor::cat(&per_batch, 0)
    }

    /// Gradients by recomputation, chunk by chunk: with P = softmax(S),
    /// dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)),
    /// dQ = dS K * scale, dK = dS^T Q * scale.
    fn backward(&self, q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor, scale: f64) -> Result<[Tensor; 3]> {
        let (b, nq, _) = q.dims3()?;
        let (mut dqs, mut dks, mut dvs) = (Vec::new(), Vec::new(), Vec::new());
        for (b0, bl) in Self::spans(b, self.batch) {
            let (qb, kb, vb, gb) = (q.narrow(0, b0, bl)?, k.narrow(0, b0, bl)?, v.narrow(0, b0, bl)?, g.narrow(0, b0, bl)?);
            let (kt, vt) = (kb.t()?, vb.t()?);
            let mut dq_rows = Vec::new();
            let mut dkv: Option<(Tensor, Tensor)> = None;
            for (r0, rl) in Self::spans(nq, self.rows) {
                let (qc, gc) = (qb.narrow(1, r0, rl)?, gb.narrow(1, r0, rl)?);
                let p = probs(&qc, &kt, scale)?;
                let dp = gc.matmul(&vt)?;
                let ds = (dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)? * &p)?;
                dq_rows.push((ds.matmul(&kb)? * scale)?);
                let dk = (ds.t()?.matmul(&qc)? * scale)?;
                let dv = p.t()?.matmul(&gc)?;
                dkv = Some(match dkv {
                    None => (dk, dv),
                    Some((ak, av)) => ((ak + dk)?, (av + dv)?),
                });
            }
            dqs.push(Tensor::cat(&dq_rows, 1)?);
            if let Some((dk, dv)) = dkv {
                dks.push(dk);
                dvs.push(dv);
            }
        }
        Ok([Tensor::cat(&dqs, 0)?, Tensor::cat(&dks, 0)?, Tensor::cat(&dvs, 0)?])
    }
}

/// softmax(q k^T * scale) for one chunk; `kt` is k transposed.
fn probs(q: &Tensor, kt: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(q.matmul(kt)? * scale)?)
}

/// Graph node for attention: its forward hands over the output computed
/// (detached, chunked) by `attention_with_limit`, its backward recomputes.
struct AttentionBackward {
    scale: f64,
    plan: Chunking,
    out: Mutex<Option<Tensor>>,
}

impl AttentionBackward {
    /// Gives the precomputed output's storage to the op (once), as the
    /// backend storage type `pick` selects.
    fn adopt<S: BackendStorage>(&self, pick: fn(&Storage) -> Option<&S>) -> Result<(S, Shape)> {
        let taken = match self.out.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let Some(out) = taken else { candle_core::bail!("attention: output already consumed") };
        let (storage, layout) = out.storage_and_layout();
        match pick(&storage) {
            Some(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            None => candle_core::bail!("attention: output is on another device than its inputs"),
        }
    }
}

fn cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

fn cuda(s: &Storage) -> Option<&CudaStorage> {
    match s {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

fn metal(s: &Storage) -> Option<&MetalStorage> {
    match s {
        Storage::Metal(s) => Some(s),
        _ => None,
    }
}

impl CustomOp3 for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.adopt(cpu)
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.adopt(cuda)
    }

    fn metal_fwd(&self, _: &MetalStorage, _: &Layout, _: &MetalStorage, _: &Layout, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        self.adopt(metal)
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached, so the recomputed chunks are not recorded in a graph that
        // would keep them alive.
        let c = |t: &Tensor| t.detach().to_dtype(compute_dtype(q.dtype()))?.contiguous();
        let [dq, dk, dv] = self.plan.backward(&c(q)?, &c(k)?, &c(v)?, &c(grad)?, self.scale)?;
        Ok((Some(dq.to_dtype(q.dtype())?), Some(dk.to_dtype(k.dtype())?), Some(dv.to_dtype(v.dtype())?)))
    }
}

#[cfg(test)]
mod plan_tests {
    use super::Chunking;

    fn check(b: usize, nq: usize, nk: usize, max: usize) -> Chunking {
        let c = Chunking::new(b, nq, nk, max);
        assert!(c.batch >= 1 && c.batch <= b && c.rows >= 1 && c.rows <= nq, "{c:?}");
        assert!(c.batch * c.rows * nk <= max.max(nk), "{c:?} exceeds {max} for b={b} nq={nq} nk={nk}");
        assert!(c.batch == 1 || c.rows == nq, "batch is split only in whole rows: {c:?}");
        c
    }

    #[test]
    fn chunks_respect_the_bound() {
        for &(b, nq, nk) in &[(1, 1, 1), (4, 5, 6), (7, 13, 3), (3, 1, 9)] {
            for max in 1..=b * nq * nk + 3 {
                check(b, nq, nk, max);
            }
        }
        assert_eq!(check(4, 5, 6, 120), Chunking { batch: 4, rows: 5 });
        assert_eq!(check(4, 5, 6, 60), Chunking { batch: 2, rows: 5 });
        assert_eq!(check(4, 5, 6, 12), Chunking { batch: 1, rows: 2 });
    }

    /// SDXL at 1024px: batch 2 x 10 heads over 64x64 tokens, and a batch of
    /// 8 x 20 heads at 32x32 tokens; SD2.1 at 768px (96x96 latent / 2).
    #[test]
    fn sdxl_sizes_stay_under_the_default_bound() {
        let max = super::ATTENTION_CHUNK_ELEMS;
        check(2 * 10, 4096, 4096, max);
        check(8 * 20, 1024, 1024, max);
        check(2 * 5, 9216, 9216, max);
        check(2 * 10, 4096, 77, max);
        // A head count so large that one query row per entry exceeds the
        // bound: the batch x heads dimension is split as well.
        let c = check(5000, 4096, 4096, max);
        assert!(c.batch < 5000);
    }
}
