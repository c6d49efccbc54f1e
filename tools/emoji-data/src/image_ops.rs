//! Pixel work: decode or rasterise, composite on white, area-resample, encode.
//!
//! Every source ends as premultiplied sRGB RGBA8 (what tiny-skia renders and
//! what a straight-alpha PNG becomes after multiplying), then
//! `over_white` flattens it exactly as a browser shows it on a white page, and
//! `area_resize` averages in linear light, so thin dark outlines keep their
//! true weight when 72 or 256 pixels become 32.

use anyhow::{bail, Context, Result};

/// Opaque RGB image, row-major.
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Flattens premultiplied sRGB RGBA8 onto white: `c + (1 - a) * 255`.
pub fn over_white_premultiplied(width: usize, height: usize, rgba: &[u8]) -> Rgb {
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.chunks_exact(4) {
        let inv = 255 - px[3] as u16;
        for &c in &px[..3] {
            data.push((c as u16 + inv).min(255) as u8);
        }
    }
    Rgb {
        width,
        height,
        data,
    }
}

/// Flattens straight-alpha sRGB RGBA8 onto white: `c * a + 255 * (1 - a)`.
pub fn over_white_straight(width: usize, height: usize, rgba: &[u8]) -> Rgb {
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.chunks_exact(4) {
        let a = px[3] as u32;
        for &c in &px[..3] {
            // rounded integer blend; exact and platform independent
            data.push(((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    Rgb {
        width,
        height,
        data,
    }
}

/// Decodes a PNG (any colour type) and flattens it onto white.
pub fn decode_png_on_white(bytes: &[u8]) -> Result<Rgb> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .context("decoding PNG")?
        .to_rgba8();
    let (w, h) = img.dimensions();
    Ok(over_white_straight(w as usize, h as usize, img.as_raw()))
}

/// Rasterises an SVG to a `size`x`size` square (aspect kept, centred) and
/// flattens it onto white.
pub fn render_svg_on_white(svg: &[u8], size: u32) -> Result<Rgb> {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_data(svg, &usvg::Options::default()).context("parsing SVG")?;
    let Some(mut pixmap) = tiny_skia::Pixmap::new(size, size) else {
        bail!("bad size {size}")
    };
    let s = tree.size();
    let scale = (size as f32 / s.width()).min(size as f32 / s.height());
    let dx = (size as f32 - s.width() * scale) / 2.0;
    let dy = (size as f32 - s.height() * scale) / 2.0;
    let transform = tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, dx, dy);
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    Ok(over_white_premultiplied(
        size as usize,
        size as usize,
        pixmap.data(),
    ))
}

fn srgb_to_linear(c: u8) -> f32 {
    let c = c as f32 / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(l: f32) -> u8 {
    let l = l.clamp(0.0, 1.0);
    let c = if l <= 0.003_130_8 {
        l * 12.92
    } else {
        1.055 * l.powf(1.0 / 2.4) - 0.055
    };
    (c * 255.0 + 0.5).floor() as u8
}

/// Weights of each source index for every destination index when `n` source
/// pixels are squeezed into `m` (box / area filter: each destination pixel is
/// the exact area-weighted mean of the source pixels it covers).
fn area_weights(n: usize, m: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|j| {
            let (lo, hi) = (j as f64 * scale, (j + 1) as f64 * scale);
            let mut w = Vec::new();
            let mut i = lo.floor() as usize;
            while (i as f64) < hi && i < n {
                let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                if overlap > 0.0 {
                    w.push((i, (overlap / scale) as f32));
                }
                i += 1;
            }
            w
        })
        .collect()
}

/// Area-resamples to `size`x`size` in linear light. Meant for downscaling (the
/// sources are 64-256 px); upscaling degrades to nearest neighbour.
pub fn area_resize(img: &Rgb, size: usize) -> Rgb {
    if img.width == size && img.height == size {
        return Rgb {
            width: size,
            height: size,
            data: img.data.clone(),
        };
    }
    let lut: Vec<f32> = (0..=255u8).map(srgb_to_linear).collect();
    let lin: Vec<f32> = img.data.iter().map(|&c| lut[c as usize]).collect();
    let wx = area_weights(img.width, size);
    let wy = area_weights(img.height, size);
    // horizontal pass: height x size x 3
    let mut tmp = vec![0f32; img.height * size * 3];
    for y in 0..img.height {
        for (x, ws) in wx.iter().enumerate() {
            for ch in 0..3 {
                let mut acc = 0f32;
                for &(i, w) in ws {
                    acc += w * lin[(y * img.width + i) * 3 + ch];
                }
                tmp[(y * size + x) * 3 + ch] = acc;
            }
        }
    }
    let mut data = vec![0u8; size * size * 3];
    for (y, ws) in wy.iter().enumerate() {
        for x in 0..size {
            for ch in 0..3 {
                let mut acc = 0f32;
                for &(i, w) in ws {
                    acc += w * tmp[(i * size + x) * 3 + ch];
                }
                data[(y * size + x) * 3 + ch] = linear_to_srgb(acc);
            }
        }
    }
    Rgb {
        width: size,
        height: size,
        data,
    }
}

/// PNG bytes (8-bit RGB). The encoder is deterministic, so reruns give the
/// same bytes.
pub fn encode_png(img: &Rgb) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &img.data,
            img.width as u32,
            img.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .context("encoding PNG")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_becomes_white() {
        let straight = [10, 20, 30, 0, 200, 0, 0, 255];
        assert_eq!(
            over_white_straight(2, 1, &straight).data,
            vec![255, 255, 255, 200, 0, 0]
        );
        let premul = [0, 0, 0, 0, 100, 0, 0, 128];
        assert_eq!(
            over_white_premultiplied(2, 1, &premul).data,
            vec![255, 255, 255, 227, 127, 127]
        );
    }

    #[test]
    fn area_weights_sum_to_one() {
        for (n, m) in [(72, 32), (64, 32), (256, 32), (72, 64), (7, 3)] {
            for ws in area_weights(n, m) {
                let s: f32 = ws.iter().map(|w| w.1).sum();
                assert!((s - 1.0).abs() < 1e-5, "{n}->{m}: {s}");
            }
        }
    }

    #[test]
    fn resize_keeps_flat_colour_and_averages_in_linear_light() {
        let flat = Rgb {
            width: 72,
            height: 72,
            data: [12u8, 130, 250].repeat(72 * 72),
        };
        let r = area_resize(&flat, 32);
        assert!(r.data.chunks(3).all(|p| p == [12, 130, 250]));
        // black/white columns -> mid grey in linear light (188), not 128
        let mut stripes = Vec::new();
        for _y in 0..4 {
            for x in 0..4 {
                stripes.extend_from_slice(if x % 2 == 0 { &[0u8; 3] } else { &[255u8; 3] });
            }
        }
        let r = area_resize(
            &Rgb {
                width: 4,
                height: 4,
                data: stripes,
            },
            2,
        );
        assert!(r.data.iter().all(|&c| c == 188), "{:?}", r.data);
    }

    #[test]
    fn svg_background_is_white() {
        let svg = br##"<svg viewBox="0 0 10 10" xmlns="http://www.w3.org/2000/svg"><rect x="0" y="0" width="5" height="10" fill="#000"/></svg>"##;
        let img = render_svg_on_white(svg, 10).unwrap();
        assert_eq!(&img.data[..3], &[0, 0, 0]);
        assert_eq!(&img.data[27..30], &[255, 255, 255]);
    }
}
