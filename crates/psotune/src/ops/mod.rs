//! Differentiable ops that candle lacks or gets wrong for training.
//!
//! candle's fused `softmax_last_dim` and `layer_norm` have no backward, and
//! the backward of `upsample_nearest2d` overwrites instead of summing; using
//! them in a training tool silently cuts or corrupts gradients. The versions
//! here are built from primitives whose backward candle implements, and each
//! has a finite-difference gradient check (f64) in `gradcheck`.

mod activation;
mod attention;
mod attention_heads;
mod bias;
mod checkpoint;
mod conv;
mod frozen_linear;
/// Slice helpers of the CPU kernels, shared with the optimizer's in-place update.
pub(crate) mod cpu;
mod geglu_fused;
mod group_norm_fused;
mod layer_norm_fused;
mod norm;
mod softmax;
mod upsample;

pub use activation::{gelu_erf, quick_gelu, silu};
pub use bias::bias_add_last;
pub use checkpoint::checkpoint;
pub use conv::{conv2d, conv2d_bias};
pub use frozen_linear::{linear_frozen, matmul_frozen_weight};
pub use group_norm_fused::{group_norm_fused, group_norm_silu};
pub use attention::{attention, attention_with_limit, ATTENTION_CHUNK_ELEMS};
pub use attention_heads::{attention_heads, attention_heads_with_limit};
pub use geglu_fused::geglu;
pub use layer_norm_fused::layer_norm;
pub use norm::group_norm;
pub use softmax::softmax_last_dim;
pub use upsample::{upsample_nearest2x, upsample_nearest_to};
/// The SIMD path of the CPU kernels (`PSOTUNE_SIMD`).
pub use cpu::simd;

/// The dtype reductions run in: f32 for half-precision input, as PyTorch's
/// CPU kernels accumulate (`opmath_t`); summing thousands of values in f16
/// or bf16 loses them or overflows.
fn compute_dtype(dtype: candle_core::DType) -> candle_core::DType {
    match dtype {
        candle_core::DType::F16 | candle_core::DType::BF16 => candle_core::DType::F32,
        d => d,
    }
}

#[cfg(test)]
pub(crate) mod gradcheck;
#[cfg(test)]
mod tests;
