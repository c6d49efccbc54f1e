//! Scaled dot-product attention with bounded memory: queries are processed in
//! chunks so that the score matrix never holds more than about
//! `ATTENTION_CHUNK_ELEMS` elements, whatever the image size (SDXL's 4096
//! queries x 4096 keys x heads would otherwise need gigabytes).

use candle_core::{Result, Tensor};

use super::softmax_last_dim;

/// Upper bound on score-matrix elements materialised at once.
pub const ATTENTION_CHUNK_ELEMS: usize = 1 << 24;

/// q: [B, Nq, D], k: [B, Nk, D], v: [B, Nk, Dv] -> [B, Nq, Dv].
/// `B` is batch x heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, nq, _) = q.dims3()?;
    let nk = k.dim(1)?;
    let kt = k.t()?;
    let rows = (ATTENTION_CHUNK_ELEMS / (b * nk).max(1)).clamp(1, nq.max(1));
    if rows >= nq {
        return softmax_last_dim(&(q.matmul(&kt)? * scale)?)?.matmul(v);
    }
    let mut outs = Vec::with_capacity(nq.div_ceil(rows));
    let mut start = 0;
    while start < nq {
        let len = rows.min(nq - start);
        let qc = q.narrow(1, start, len)?;
        let p = softmax_last_dim(&(qc.matmul(&kt)? * scale)?)?;
        outs.push(p.matmul(v)?);
        start += len;
    }
    Tensor::cat(&outs, 1)
}
