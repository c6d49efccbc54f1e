//! The classification loss, built from candle primitives that have a
//! backward (candle's fused softmax has none).

use candle_core::{Result, Tensor};

/// Mean cross-entropy of `logits` [N, C] against class indices, as
/// `torch.nn.functional.cross_entropy(logits, targets)`: the log-softmax is
/// taken with the row maximum subtracted (held constant: it cancels in the
/// value, so it needs no gradient), and the target's entry picked by a
/// one-hot product.
pub fn cross_entropy(logits: &Tensor, targets: &[usize]) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if targets.len() != n || n == 0 {
        candle_core::bail!("cross_entropy: {n} rows of logits, {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|t| **t >= c) {
        candle_core::bail!("cross_entropy: target {t} out of range for {c} classes");
    }
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?;
    let mut one_hot = vec![0f64; n * c];
    for (i, t) in targets.iter().enumerate() {
        one_hot[i * c + t] = 1.0;
    }
    let one_hot = Tensor::from_vec(one_hot, (n, c), logits.device())?.to_dtype(logits.dtype())?;
    (log_probs * one_hot)?.sum_all()?.affine(-1.0 / n as f64, 0.0)
}

/// The same loss summed in f64 from plain numbers (a reference for tests
/// and a cheap evaluation path).
#[cfg(test)]
pub fn cross_entropy_reference(logits: &[Vec<f64>], targets: &[usize]) -> f64 {
    let mut total = 0.0;
    for (row, &t) in logits.iter().zip(targets) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
        total += -(row[t] - m - z.ln());
    }
    total / logits.len() as f64
}
