//! Nearest-neighbour upsampling with a backward that adds. candle 0.11's
//! `upsample_nearest2d` backward computes the right 2x2 block sums but
//! assigns them (`*sum_grad = conv_sum` in candle-core's backprop.rs), wiping
//! whatever gradient the input had already collected from its other uses,
//! e.g. a skip connection. Broadcasting and `index_select` accumulate.

use candle_core::{Result, Tensor};

/// [B, C, H, W] -> [B, C, 2H, 2W], each pixel repeated over a 2x2 block
/// (`F.interpolate(scale_factor=2.0, mode="nearest")`).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// Nearest-neighbour resize to (th, tw) (up or down) with PyTorch's
/// `nearest` rule, `src = min(floor(dst * (in / out)), in - 1)`, computed in
/// f32 as PyTorch's `nearest_idx` (aten/src/ATen/native/UpSample.h) does for
/// f32/f16/bf16 tensors: in exact arithmetic 37 * 24 / 74 is 12, but PyTorch
/// picks 11 and diffusers' `Upsample2D(output_size=...)` must match it.
/// `index_select`'s backward accumulates, so repeated sources sum.
pub fn upsample_nearest_to(x: &Tensor, th: usize, tw: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (h_idx, w_idx) = (nearest_index(h, th), nearest_index(w, tw));
    x.index_select(&Tensor::new(h_idx.as_slice(), x.device())?, 2)?
        .index_select(&Tensor::new(w_idx.as_slice(), x.device())?, 3)
}

/// Source index of each of `out` destinations, as PyTorch's `nearest_idx`.
pub(crate) fn nearest_index(inp: usize, out: usize) -> Vec<u32> {
    if out == inp {
        return (0..out as u32).collect();
    }
    if out == 2 * inp {
        return (0..out as u32).map(|i| i >> 1).collect();
    }
    let scale = inp as f32 / out as f32;
    (0..out).map(|i| ((i as f32 * scale).floor() as usize).min(inp.saturating_sub(1)) as u32).collect()
}
