//! Cosine similarity between feature vectors: the image-to-image
//! similarity of concept customization (the miniature of CLIP-I / DINO
//! scores, which average the cosine between generated and reference
//! embeddings).

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Norms below this count as this, as `torch.nn.functional.cosine_similarity`
/// clamps them, so a zero vector gives similarity 0 instead of NaN.
const EPS: f64 = 1e-8;

/// The rows of a [N, D] tensor as unit vectors (f64).
fn unit_rows(x: &Tensor, what: &str) -> Result<(Vec<f64>, usize, usize)> {
    let (n, d) = x
        .dims2()
        .map_err(|_| Error::invalid(format!("cosine similarity: `{what}` must be [N, D], got shape {:?}", x.dims())))?;
    if n == 0 || d == 0 {
        return Err(Error::invalid(format!("cosine similarity: `{what}` is empty ({:?})", x.dims())));
    }
    let mut v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    for row in v.chunks_exact_mut(d) {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(EPS);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    Ok((v, n, d))
}

/// The [N, M] cosine similarities of every row of `a` [N, D] with every
/// row of `b` [M, D], row-major.
pub fn cosine_similarity_matrix(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let (ua, _, da) = unit_rows(a, "a")?;
    let (ub, _, db) = unit_rows(b, "b")?;
    if da != db {
        return Err(Error::invalid(format!("cosine similarity: feature dimensions differ ({da} and {db})")));
    }
    let mut out = Vec::with_capacity(ua.len() / da * (ub.len() / db));
    for ra in ua.chunks_exact(da) {
        for rb in ub.chunks_exact(db) {
            out.push(ra.iter().zip(rb).map(|(x, y)| x * y).sum());
        }
    }
    Ok(out)
}

/// The mean cosine similarity over all pairs (every row of `a` against
/// every row of `b`): how close a set of samples is to a set of references.
pub fn mean_cosine_similarity(a: &Tensor, b: &Tensor) -> Result<f64> {
    let m = cosine_similarity_matrix(a, b)?;
    Ok(m.iter().sum::<f64>() / m.len() as f64)
}

/// The mean cosine similarity of row i of `a` with row i of `b` (both
/// [N, D]): for samples matched one to one, e.g. the same seed before and
/// after tuning.
pub fn paired_cosine_similarity(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (ua, na, da) = unit_rows(a, "a")?;
    let (ub, nb, db) = unit_rows(b, "b")?;
    if (na, da) != (nb, db) {
        return Err(Error::invalid(format!("paired cosine similarity: shapes differ ({na}x{da} and {nb}x{db})")));
    }
    let total: f64 = ua.chunks_exact(da).zip(ub.chunks_exact(db)).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>()).sum();
    Ok(total / na as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], n: usize, d: usize) -> Tensor {
        Tensor::from_slice(v, (n, d), &Device::Cpu).unwrap()
    }

    /// By hand: (1,0) and (0,1) both make 45 degrees with (1,1): cos = 1/sqrt(2).
    /// Paired: (1,0).(2,0) -> 1; (3,4).(4,3) = 24 / (5 * 5) -> 0.96; mean 0.98.
    #[test]
    fn hand_computed() {
        let a = t(&[1.0, 0.0, 0.0, 1.0], 2, 2);
        let b = t(&[1.0, 1.0], 1, 2);
        let m = cosine_similarity_matrix(&a, &b).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|v| (v - 0.5f64.sqrt()).abs() < 1e-7), "{m:?}");
        assert!((mean_cosine_similarity(&a, &b).unwrap() - 0.5f64.sqrt()).abs() < 1e-7);
        let p = paired_cosine_similarity(&t(&[1.0, 0.0, 3.0, 4.0], 2, 2), &t(&[2.0, 0.0, 4.0, 3.0], 2, 2)).unwrap();
        assert!((p - 0.98).abs() < 1e-7, "{p}");
        // All pairs of the same two sets: (1 + 0.6 + 0.8 + 0.96) / 4.
        let all = mean_cosine_similarity(&t(&[1.0, 0.0, 3.0, 4.0], 2, 2), &t(&[2.0, 0.0, 4.0, 3.0], 2, 2)).unwrap();
        assert!((all - (1.0 + 0.8 + 0.6 + 0.96) / 4.0).abs() < 1e-7, "{all}");
    }

    #[test]
    fn zero_vectors_and_errors() {
        let z = t(&[0.0, 0.0], 1, 2);
        assert_eq!(mean_cosine_similarity(&z, &t(&[1.0, 2.0], 1, 2)).unwrap(), 0.0);
        let e = mean_cosine_similarity(&t(&[1.0, 2.0], 1, 2), &t(&[1.0, 2.0, 3.0], 1, 3)).unwrap_err().to_string();
        assert!(e.contains("2 and 3"), "{e}");
        let e = paired_cosine_similarity(&t(&[1.0, 2.0], 1, 2), &t(&[1.0, 2.0, 3.0, 4.0], 2, 2)).unwrap_err().to_string();
        assert!(e.contains("1x2 and 2x2"), "{e}");
        let flat = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(mean_cosine_similarity(&flat, &flat).unwrap_err().to_string().contains("[N, D]"));
    }
}
