//! Nearest-neighbour 2x upsampling by broadcasting, so that the backward is
//! the sum over each 2x2 block (candle's `upsample_nearest2d` backward
//! overwrites instead of adding).

use candle_core::{Result, Tensor};

pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// Nearest-neighbour resize to (th, tw) with PyTorch's `nearest` index rule
/// (src = floor(dst * in / out)); `index_select`'s backward accumulates.
pub fn upsample_nearest_to(x: &Tensor, th: usize, tw: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let idx = |out: usize, inp: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..out).map(|i| ((i as f64 * inp as f64 / out as f64).floor() as usize).min(inp - 1) as u32).collect();
        Tensor::from_vec(v, out, x.device())
    };
    x.index_select(&idx(th, h)?, 2)?.index_select(&idx(tw, w)?, 3)
}
