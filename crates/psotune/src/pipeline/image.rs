//! Converting between image files and tensors, the way diffusers'
//! `VaeImageProcessor` does (model space [-1, 1], files 8-bit RGB).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Write a [3, H, W] tensor with values in [0, 1] as an 8-bit RGB PNG,
/// rounding like diffusers' `numpy_to_pil` ((x * 255).round()).
pub fn save_png(image: &Tensor, path: &Path) -> Result<()> {
    let (c, h, w) = image.dims3()?;
    if c != 3 {
        return Err(Error::invalid(format!("save_png: expected 3 channels, got shape {:?}", image.dims())));
    }
    let data: Vec<u8> = image
        .to_dtype(DType::F32)?
        .clamp(0f32, 1f32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let buf = image::RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| Error::Image { path: path.to_path_buf(), msg: "buffer size mismatch".into() })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    buf.save(path).map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })
}

/// Read an image file as a [3, H, W] f32 tensor in [-1, 1] (alpha is
/// composited onto white, as emoji and icon sets need).
pub fn load_image(path: &Path, device: &Device) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
    image_to_tensor(&img, device)
}

/// A decoded image as a [3, H, W] f32 tensor in [-1, 1], alpha composited
/// onto white (see [`load_image`]).
pub fn image_to_tensor(img: &image::DynamicImage, device: &Device) -> Result<Tensor> {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for p in rgba.pixels() {
        let a = p[3] as f32 / 255.0;
        for c in 0..3 {
            let v = p[c] as f32 / 255.0 * a + (1.0 - a);
            data.push(v * 2.0 - 1.0);
        }
    }
    Ok(Tensor::from_vec(data, (h as usize, w as usize, 3), device)?.permute((2, 0, 1))?.contiguous()?)
}

/// Write images [N, 3, H, W] with values in [0, 1] as one PNG: `cols` per
/// row (row-major), each enlarged `scale` times (nearest neighbour, so
/// tiny images stay crisp), with a 1-pixel white gutter.
pub fn save_grid(images: &Tensor, cols: usize, scale: usize, path: &Path) -> Result<()> {
    let (n, c, h, w) = images.dims4()?;
    if n == 0 || cols == 0 || scale == 0 {
        return Err(Error::invalid(format!("save_grid: {n} images in {cols} columns at scale {scale}")));
    }
    let (h, w) = (h * scale, w * scale);
    let images = if scale > 1 { images.upsample_nearest2d(h, w)? } else { images.clone() };
    let rows = n.div_ceil(cols);
    let (gh, gw) = (rows * (h + 1) + 1, cols * (w + 1) + 1);
    let mut canvas = vec![1f32; c * gh * gw];
    let data = images.to_dtype(DType::F32)?.clamp(0f32, 1f32)?.flatten_all()?.to_vec1::<f32>()?;
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
    save_png(&Tensor::from_vec(canvas, (c, gh, gw), images.device())?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_is_exact_on_8bit_values() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..3 * 4 * 5).map(|i| ((i * 37) % 256) as f32 / 255.0).collect();
        let t = Tensor::from_vec(vals, (3, 4, 5), &dev).unwrap();
        let d = crate::scratch::ScratchDir::new("psotune-img").unwrap();
        let p = d.join("image.png");
        save_png(&t, &p).unwrap();
        let back = ((load_image(&p, &dev).unwrap() + 1.0).unwrap() / 2.0).unwrap();
        let diff = (back - &t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        let e = load_image(Path::new("/nonexistent.png"), &dev).unwrap_err().to_string();
        assert!(e.contains("/nonexistent.png"), "{e}");
    }
}
