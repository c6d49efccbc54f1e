//! CPU kernels behind the fast custom ops: plain slices in, plain slices out.

pub mod gemm;
pub mod im2col;
pub mod reduce;
