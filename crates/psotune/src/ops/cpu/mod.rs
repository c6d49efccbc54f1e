//! CPU kernels behind the fast custom ops: plain slices in, plain slices out.

pub mod attn_tiles;
pub mod lanes;
mod erf_fast;
pub mod gemm;
pub mod im2col;
pub mod real;
pub mod reduce;
pub mod exp_poly;
pub mod simd;

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor, WithDType};

use real::Real;

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

/// The contiguous data of a CPU tensor as a mutable slice, written in place
/// (candle's in-place op takes the storage's write lock). Every tensor
/// sharing the storage sees the change: only for tensors the caller owns,
/// such as parameters between steps and optimizer moments.
pub fn with_slice_mut<T: Real, R>(t: &Tensor, f: impl FnOnce(&mut [T]) -> Result<R>) -> Result<R> {
    let op = InPlace { f: Mutex::new(Some(f)), out: Mutex::new(None), _t: std::marker::PhantomData::<T> };
    t.inplace_op1(&op)?;
    let out = op.out.lock().ok().and_then(|mut o| o.take());
    match out {
        Some(r) => r,
        None => candle_core::bail!("in-place CPU op did not run (tensor not on the CPU?)"),
    }
}

struct InPlace<T, F, R> {
    f: Mutex<Option<F>>,
    out: Mutex<Option<Result<R>>>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Real, R, F: FnOnce(&mut [T]) -> Result<R>> InplaceOp1 for InPlace<T, F, R> {
    fn name(&self) -> &'static str {
        "psotune-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("in-place op on a non-contiguous tensor") };
        let f = self.f.lock().ok().and_then(|mut f| f.take());
        let Some(f) = f else { candle_core::bail!("in-place op run twice") };
        let Some(data) = T::storage_mut(storage) else { candle_core::bail!("in-place op: storage is not {:?}", T::DTYPE) };
        let r = f(&mut data[a..b]);
        if let Ok(mut o) = self.out.lock() {
            *o = Some(r);
        }
        Ok(())
    }
}

/// The contiguous data behind a custom op's CPU operand.
pub fn slice_of<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("expected a contiguous operand"),
    }
}

/// Rows per parallel task so that a task holds at least ~`min_elems`
/// elements (rayon's per-task overhead dwarfs tiny rows).
pub fn rows_per_task(row_len: usize, min_elems: usize) -> usize {
    (min_elems / row_len.max(1)).max(1)
}
