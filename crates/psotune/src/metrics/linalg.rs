//! The symmetric eigendecomposition the Frechet distance needs, in f64.
//!
//! Two classical steps (Golub & Van Loan, "Matrix Computations", 4th ed.,
//! algorithms 8.3.1 and 8.3.3): Householder reduction to tridiagonal form,
//! then implicit symmetric QR steps with a Wilkinson shift, the Givens
//! rotations accumulated into the eigenvectors. About 10 n^3 flops: a
//! 256x256 covariance takes tens of milliseconds, where a cyclic Jacobi
//! solver (simpler, but ~10 sweeps of 6 n^3) would take a second.
//!
//! Matrices are dense row-major `Vec<f64>` of `n * n` values; this module
//! is private to `metrics`, whose callers never see it.

use crate::error::{Error, Result};

/// `a = V diag(values) V^T`, eigenvalues ascending; `vectors[k]` is the
/// unit eigenvector of `values[k]`.
#[derive(Debug, Clone)]
pub struct SymEig {
    pub values: Vec<f64>,
    pub vectors: Vec<Vec<f64>>,
}

/// Eigendecomposition of the symmetric `n x n` matrix `a` (row-major; only
/// symmetric input gives a meaningful answer, the lower triangle is read).
pub fn sym_eig(a: &[f64], n: usize) -> Result<SymEig> {
    if a.len() != n * n {
        return Err(Error::invalid(format!("sym_eig: {} values for a {n}x{n} matrix", a.len())));
    }
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!("sym_eig: entry ({}, {}) is {}", i / n, i % n, a[i])));
    }
    if n == 0 {
        return Ok(SymEig { values: vec![], vectors: vec![] });
    }
    let (mut d, mut e, mut qt) = tridiagonalize(a, n);
    tridiagonal_qr(&mut d, &mut e, &mut qt, n)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values = order.iter().map(|&i| d[i]).collect();
    let vectors = order.iter().map(|&i| qt[i * n..(i + 1) * n].to_vec()).collect();
    Ok(SymEig { values, vectors })
}

/// Householder reduction `a = Q T Q^T`, T tridiagonal with diagonal `d` and
/// sub-diagonal `e` (`e[k] = T[k+1][k]`). Returns Q transposed (row k of
/// `qt` is column k of Q), so that the later rotations, which mix columns
/// of Q, touch contiguous rows.
fn tridiagonalize(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    // Work on the full symmetric matrix, mirrored from the lower triangle.
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            m[i * n + j] = a[i * n + j];
            m[j * n + i] = a[i * n + j];
        }
    }
    let mut qt = identity(n);
    let mut e = vec![0.0; n.saturating_sub(1)];
    let mut v = vec![0.0; n];
    let mut p = vec![0.0; n];
    let mut dots = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        // x = m[k+1.., k]; v = x + sign(x0) |x| e1 zeroes all but its first entry.
        let norm = (k + 1..n).map(|i| m[i * n + k].powi(2)).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            continue;
        }
        let x0 = m[(k + 1) * n + k];
        let alpha = if x0 >= 0.0 { -norm } else { norm };
        for i in k + 1..n {
            v[i] = m[i * n + k];
        }
        v[k + 1] -= alpha;
        let vtv: f64 = (k + 1..n).map(|i| v[i] * v[i]).sum();
        let beta = 2.0 / vtv;
        // H M22 H with H = I - beta v v^T, as a rank-2 update:
        // p = beta M22 v, w = p - (beta p.v / 2) v, M22 -= v w^T + w v^T.
        for i in k + 1..n {
            p[i] = beta * (k + 1..n).map(|j| m[i * n + j] * v[j]).sum::<f64>();
        }
        let kappa = beta * (k + 1..n).map(|i| p[i] * v[i]).sum::<f64>() / 2.0;
        for i in k + 1..n {
            p[i] -= kappa * v[i]; // p is now w
        }
        for i in k + 1..n {
            for j in k + 1..n {
                m[i * n + j] -= v[i] * p[j] + p[i] * v[j];
            }
        }
        e[k] = alpha;
        for i in k + 1..n {
            m[i * n + k] = 0.0;
            m[k * n + i] = 0.0;
        }
        // Q <- Q H: rows k+1.. of Q^T get  -= beta v (v^T Q^T[k+1..]),
        // both products walking rows (contiguous).
        dots.iter_mut().for_each(|x| *x = 0.0);
        for i in k + 1..n {
            for (acc, q) in dots.iter_mut().zip(&qt[i * n..(i + 1) * n]) {
                *acc += v[i] * q;
            }
        }
        for i in k + 1..n {
            let bv = beta * v[i];
            for (q, dot) in qt[i * n..(i + 1) * n].iter_mut().zip(&dots) {
                *q -= bv * dot;
            }
        }
    }
    if n >= 2 {
        e[n - 2] = m[(n - 1) * n + (n - 2)];
    }
    let d = (0..n).map(|i| m[i * n + i]).collect();
    (d, e, qt)
}

fn identity(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}

/// Diagonalize the tridiagonal (d, e) in place by implicit QR steps; every
/// rotation is applied to the rows of `qt` too, so on return row k of `qt`
/// is the eigenvector of `d[k]`.
fn tridiagonal_qr(d: &mut [f64], e: &mut [f64], qt: &mut [f64], n: usize) -> Result<()> {
    let mut iterations = 0usize;
    let mut hi = n - 1; // the unreduced block being worked on ends at `hi`
    while hi > 0 {
        // Deflate: a negligible sub-diagonal splits the matrix.
        for k in 0..hi {
            if e[k].abs() <= f64::EPSILON * (d[k].abs() + d[k + 1].abs()) {
                e[k] = 0.0;
            }
        }
        if e[hi - 1] == 0.0 {
            hi -= 1;
            continue;
        }
        let mut lo = hi - 1;
        while lo > 0 && e[lo - 1] != 0.0 {
            lo -= 1;
        }
        iterations += 1;
        if iterations > 50 * n {
            return Err(Error::invalid(format!("sym_eig: QR iteration did not converge for a {n}x{n} matrix")));
        }
        qr_step(d, e, qt, n, lo, hi);
    }
    Ok(())
}

/// One implicit QR step with Wilkinson shift on the unreduced block
/// `lo..=hi` (G&VL algorithm 8.3.2): a rotation chosen from the shifted
/// first column starts a bulge that the following rotations chase down.
fn qr_step(d: &mut [f64], e: &mut [f64], qt: &mut [f64], n: usize, lo: usize, hi: usize) {
    // The eigenvalue of the trailing 2x2 block closer to d[hi].
    let t = (d[hi - 1] - d[hi]) / 2.0;
    let b2 = e[hi - 1] * e[hi - 1];
    let sign = if t >= 0.0 { 1.0 } else { -1.0 };
    let mu = d[hi] - b2 / (t + sign * t.hypot(e[hi - 1]));
    let mut x = d[lo] - mu;
    let mut z = e[lo];
    for k in lo..hi {
        let (c, s) = givens(x, z);
        if k > lo {
            // The rotation zeroes the bulge at (k+1, k-1).
            e[k - 1] = c * x - s * z;
        }
        // G^T [[a, b], [b, f]] G with G = [[c, s], [-s, c]].
        let (a, b, f) = (d[k], e[k], d[k + 1]);
        d[k] = c * c * a - 2.0 * c * s * b + s * s * f;
        d[k + 1] = s * s * a + 2.0 * c * s * b + c * c * f;
        e[k] = c * s * (a - f) + (c * c - s * s) * b;
        if k + 1 < hi {
            // Row k+2 was [0, e[k+1]] in columns (k, k+1); it becomes the bulge.
            let g = e[k + 1];
            z = -s * g;
            e[k + 1] = c * g;
            x = e[k];
        }
        // Eigenvectors: columns k, k+1 of V (rows of V^T) rotate the same way.
        let (rk, rk1) = qt.split_at_mut((k + 1) * n);
        let rk = &mut rk[k * n..];
        for (p, q) in rk.iter_mut().zip(rk1[..n].iter_mut()) {
            let (vp, vq) = (*p, *q);
            *p = c * vp - s * vq;
            *q = s * vp + c * vq;
        }
    }
}

/// (c, s) with `c a - s b = r` and `s a + c b = 0` (G&VL algorithm 5.1.3).
fn givens(a: f64, b: f64) -> (f64, f64) {
    if b == 0.0 {
        (1.0, 0.0)
    } else if b.abs() > a.abs() {
        let tau = -a / b;
        let s = 1.0 / (1.0 + tau * tau).sqrt();
        (s * tau, s)
    } else {
        let tau = -b / a;
        let c = 1.0 / (1.0 + tau * tau).sqrt();
        (c, c * tau)
    }
}

/// The square root of a symmetric positive semi-definite matrix,
/// `V diag(sqrt(max(l, 0))) V^T`: covariances of few samples have tiny
/// negative eigenvalues from rounding, which are clamped to 0.
pub fn sqrt_psd(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let eig = sym_eig(a, n)?;
    let mut out = vec![0.0; n * n];
    for (l, v) in eig.values.iter().zip(&eig.vectors) {
        let s = l.max(0.0).sqrt();
        if s == 0.0 {
            continue;
        }
        for i in 0..n {
            let si = s * v[i];
            let row = &mut out[i * n..(i + 1) * n];
            for (o, vj) in row.iter_mut().zip(v) {
                *o += si * vj;
            }
        }
    }
    Ok(out)
}

/// `a b` for row-major n x n matrices.
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        let row = &mut out[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for (o, bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *o += aik * bkj;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconstruct(eig: &SymEig, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for (l, v) in eig.values.iter().zip(&eig.vectors) {
            for i in 0..n {
                for j in 0..n {
                    out[i * n + j] += l * v[i] * v[j];
                }
            }
        }
        out
    }

    /// A symmetric test matrix: B + B^T for a deterministic B.
    fn sym(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let b: Vec<f64> = (0..n * n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = b[i * n + j] + b[j * n + i];
            }
        }
        a
    }

    fn check_decomposition(a: &[f64], n: usize) {
        let eig = sym_eig(a, n).unwrap();
        let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let r = reconstruct(&eig, n);
        let err = r.iter().zip(a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-11 * scale * n as f64, "n={n}: reconstruction error {err}");
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = eig.vectors[i].iter().zip(&eig.vectors[j]).map(|(x, y)| x * y).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12 * n as f64, "n={n}: v{i}.v{j} = {dot}");
            }
        }
        assert!(eig.values.windows(2).all(|w| w[0] <= w[1]));
    }

    /// numpy 2.x: `np.linalg.eigvalsh([[2, -1, 0], [-1, 2, -1], [0, -1, 2]])`
    /// = 2 - sqrt(2), 2, 2 + sqrt(2) (the 1-D Laplacian, known in closed form).
    #[test]
    fn known_eigenvalues() {
        let a = [2.0, -1.0, 0.0, -1.0, 2.0, -1.0, 0.0, -1.0, 2.0];
        let eig = sym_eig(&a, 3).unwrap();
        let want = [2.0 - 2f64.sqrt(), 2.0, 2.0 + 2f64.sqrt()];
        for (g, w) in eig.values.iter().zip(want) {
            assert!((g - w).abs() < 1e-14, "{g} vs {w}");
        }
        let one = sym_eig(&[-3.5], 1).unwrap();
        assert_eq!(one.values, vec![-3.5]);
        assert_eq!(one.vectors, vec![vec![1.0]]);
    }

    #[test]
    fn decomposes_random_diagonal_and_degenerate_matrices() {
        for n in [2, 3, 5, 17, 64] {
            check_decomposition(&sym(n, n as u64), n);
        }
        // Already diagonal, repeated eigenvalues, zero, rank one.
        let mut diag = vec![0.0; 16];
        for (i, v) in [3.0, -1.0, 3.0, 0.0].iter().enumerate() {
            diag[i * 4 + i] = *v;
        }
        check_decomposition(&diag, 4);
        check_decomposition(&[0.0; 25], 5);
        let u = [1.0, 2.0, -1.0, 0.5];
        let rank1: Vec<f64> = (0..16).map(|k| u[k / 4] * u[k % 4]).collect();
        check_decomposition(&rank1, 4);
        let eye = identity(6);
        check_decomposition(&eye, 6);
    }

    #[test]
    fn psd_square_root_squares_back_and_clamps_negatives() {
        let n = 8;
        let b = sym(n, 3);
        let a = matmul(&b, &b, n); // B B^T = B^2, PSD
        let s = sqrt_psd(&a, n).unwrap();
        let back = matmul(&s, &s, n);
        let err = back.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12, "{err}");
        // A tiny negative eigenvalue (rounding in a covariance) counts as 0.
        let s = sqrt_psd(&[1.0, 0.0, 0.0, -1e-17], 2).unwrap();
        assert_eq!(s, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(sym_eig(&[1.0, 2.0, 3.0], 2).unwrap_err().to_string().contains("2x2"));
        let e = sym_eig(&[1.0, f64::NAN, f64::NAN, 1.0], 2).unwrap_err().to_string();
        assert!(e.contains("(0, 1)"), "{e}");
    }

    #[test]
    fn size_256_is_fast() {
        let n = 256;
        let a = sym(n, 9);
        let t = std::time::Instant::now();
        let eig = sym_eig(&a, n).unwrap();
        let secs = t.elapsed().as_secs_f64();
        check_decomposition(&a, n);
        // Generous for a shared 2-core machine in the dev profile; it takes
        // a few tens of milliseconds when idle.
        assert!(secs < 2.0, "{secs} s");
        assert_eq!(eig.values.len(), n);
    }
}
