//! Strided matrix products through the `gemm` crate (the one candle's CPU
//! matmul uses), which picks its AVX2 / AVX-512 / NEON kernel at run time.

use gemm::Parallelism;

/// A read-only matrix view: element (r, c) is at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with row stride `rs`.
    pub fn rows(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self { data, rows, cols, rs, cs: 1 }
    }

    /// The transpose of the row-major `cols x rows` matrix in `data`.
    pub fn transposed(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        Self { data, rows, cols, rs: 1, cs: ld }
    }

    /// Index one past the last element read; views must stay in bounds.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// dst = a b (or dst += a b when `accumulate`), with `dst` row-major,
/// `a.rows x b.cols`, row stride `dst_rs`. `threads` > 1 lets gemm split the
/// product over rayon's pool; 1 runs it on the calling thread.
pub fn matmul<T: candle_core::WithDType>(
    dst: &mut [T],
    dst_rs: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the raw-pointer call below reads and writes only inside these.
    assert!(a.extent() <= a.data.len() && b.extent() <= b.data.len(), "gemm: operand view out of bounds");
    assert!((m - 1) * dst_rs + n <= dst.len(), "gemm: destination view out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(T::zero());
            }
        }
        return;
    }
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the asserts above keep every strided access of the three views
    // inside their slices; `dst` is borrowed mutably and does not alias the
    // shared borrows of `a` and `b`. gemm computes dst = alpha dst + beta a b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}
