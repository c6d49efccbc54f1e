//! Image grids for people to look at (sample sheets, reconstructions).

use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

/// Tile [N, 3, H, W] images in [-1, 1] row-major, `cols` per row, each
/// enlarged `scale` times, and write a PNG.
pub fn save_grid(images: &Tensor, cols: usize, scale: usize, path: &Path) -> Result<()> {
    let unit = ((images.clamp(-1f32, 1f32)? + 1.0)? / 2.0)?;
    Ok(psotune::pipeline::image::save_grid(&unit, cols, scale, path)?)
}
