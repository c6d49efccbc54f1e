//! CPU kernels behind the fast custom ops: plain slices in, plain slices out.

pub mod gemm;
pub mod im2col;
pub mod reduce;

use candle_core::{Result, Storage, Tensor, WithDType};

/// The contiguous data of a CPU tensor as a slice of `T`.
pub fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("expected a CPU tensor") };
    let data = cpu.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => f(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}
