//! Image grids for people to look at (sample sheets, reconstructions).

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Tensor;
use psotune::pipeline::image::save_png;

/// Tile [N, 3, H, W] images in [-1, 1] row-major, `cols` per row, with a
/// 1-pixel white gutter, and write a PNG.
pub fn save_grid(images: &Tensor, cols: usize, path: &Path) -> Result<()> {
    let (n, c, h, w) = images.dims4()?;
    if n == 0 || cols == 0 {
        bail!("save_grid: nothing to draw");
    }
    let rows = n.div_ceil(cols);
    let (gh, gw) = (rows * (h + 1) + 1, cols * (w + 1) + 1);
    let mut canvas = vec![1f32; c * gh * gw];
    let data = ((images.to_dtype(candle_core::DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? / 2.0)?.flatten_all()?.to_vec1::<f32>()?;
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        for ch in 0..c {
            for y in 0..h {
                let src = ((i * c + ch) * h + y) * w;
                let dst = (ch * gh + r * (h + 1) + 1 + y) * gw + col * (w + 1) + 1;
                canvas[dst..dst + w].copy_from_slice(&data[src..src + w]);
            }
        }
    }
    save_png(&Tensor::from_vec(canvas, (c, gh, gw), &candle_core::Device::Cpu)?, path)?;
    Ok(())
}
