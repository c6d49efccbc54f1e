//! Offline preference pairs from a Pick-a-Pic v2 parquet file: one row per
//! comparison with `caption` (string), `jpg_0` / `jpg_1` (JPEG bytes) and
//! `label_0` (1.0: image 0 preferred, 0.0: image 1, 0.5: a tie). Ties carry
//! no preference and are skipped; other columns are ignored.
//!
//! The file is read once with parquet's row API (no arrow), keeping the
//! compressed JPEG bytes: Pick-a-Pic images are 512-1024 px, so holding them
//! decoded would cost ~100x the memory. Every JPEG is decoded once at open,
//! so a bad one fails before any model work, and again when its pair is
//! encoded. Rows are counted from 0, as pyarrow and pandas count them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use crate::error::{Error, Result};
use crate::pipeline::image::image_to_tensor;

/// The columns psotune reads, in the projection's order.
const COLUMNS: [&str; 4] = ["caption", "jpg_0", "jpg_1", "label_0"];

/// One decided comparison of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParquetPair {
    pub prompt: String,
    /// JPEG bytes of the preferred and the other image.
    pub chosen: Vec<u8>,
    pub rejected: Vec<u8>,
    /// 0-based row in the file.
    pub row: usize,
    /// Columns the chosen and rejected images came from (`jpg_0` / `jpg_1`).
    pub chosen_column: &'static str,
    pub rejected_column: &'static str,
}

#[derive(Debug, Clone)]
pub struct ParquetPairs {
    pub path: PathBuf,
    pub items: Vec<ParquetPair>,
    /// Rows skipped as ties (`label_0` = 0.5).
    pub ties: usize,
}

/// Which image `label_0` prefers: Some(true) image 0, Some(false) image 1,
/// None for a tie. Pick-a-Pic stores exactly 1.0, 0.0 or 0.5.
pub fn preferred_first(label_0: f64) -> std::result::Result<Option<bool>, String> {
    if label_0 == 1.0 {
        Ok(Some(true))
    } else if label_0 == 0.0 {
        Ok(Some(false))
    } else if label_0 == 0.5 {
        Ok(None)
    } else {
        Err(format!("label_0 is {label_0}; expected 1.0 (image 0 preferred), 0.0 (image 1) or 0.5 (a tie)"))
    }
}

impl ParquetPairs {
    /// Read the file: the four columns present, every row's caption
    /// non-empty, label valid and JPEGs decodable; at least one decided pair.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |msg: String| Error::data(path, None, msg);
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| err(format!("not a readable parquet file: {e}")))?;
        let schema = reader.metadata().file_metadata().schema();
        let mut fields = Vec::new();
        for name in COLUMNS {
            let field = schema.get_fields().iter().find(|f| f.name() == name);
            let Some(field) = field else {
                let have: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
                return Err(err(format!("missing column `{name}` (the Pick-a-Pic schema needs {}; the file has {})", COLUMNS.join(", "), have.join(", "))));
            };
            fields.push(Arc::clone(field));
        }
        let projection = Type::group_type_builder(schema.name())
            .with_fields(fields)
            .build()
            .map_err(|e| err(format!("cannot select the columns: {e}")))?;
        let rows = reader.get_row_iter(Some(projection)).map_err(|e| err(format!("cannot read rows: {e}")))?;
        let (mut items, mut ties) = (Vec::new(), 0);
        for (row, r) in rows.enumerate() {
            let at = |column: &str, msg: String| err(format!("row {row}, column `{column}`: {msg}"));
            let r = r.map_err(|e| err(format!("row {row}: cannot read: {e}")))?;
            let get = |name: &str| r.get_column_iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f);
            let caption = match get("caption") {
                Some(Field::Str(s)) => s.clone(),
                Some(Field::Bytes(b)) => String::from_utf8(b.data().to_vec()).map_err(|_| at("caption", "not UTF-8 text".into()))?,
                other => return Err(at("caption", format!("expected a string, got {}", describe(other)))),
            };
            if caption.trim().is_empty() {
                return Err(at("caption", "empty caption".into()));
            }
            let label = match get("label_0") {
                Some(Field::Double(v)) => *v,
                Some(Field::Float(v)) => *v as f64,
                other => return Err(at("label_0", format!("expected a number, got {}", describe(other)))),
            };
            let Some(first) = preferred_first(label).map_err(|m| at("label_0", m))? else {
                ties += 1;
                continue;
            };
            let jpg = |column: &'static str| -> Result<Vec<u8>> {
                let bytes = match get(column) {
                    Some(Field::Bytes(b)) => b.data().to_vec(),
                    other => return Err(at(column, format!("expected JPEG bytes, got {}", describe(other)))),
                };
                decode(&bytes).map_err(|m| at(column, m))?;
                Ok(bytes)
            };
            let (c, j) = if first { ("jpg_0", "jpg_1") } else { ("jpg_1", "jpg_0") };
            let (chosen, rejected) = (jpg(c)?, jpg(j)?);
            items.push(ParquetPair { prompt: caption, chosen, rejected, row, chosen_column: c, rejected_column: j });
        }
        if items.is_empty() {
            return Err(err(format!("no decided pairs ({ties} ties skipped)")));
        }
        Ok(Self { path: path.to_path_buf(), items, ties })
    }

    /// Pair `i`'s chosen and rejected images as [3, height, width] tensors
    /// in [-1, 1], each scaled to cover the size and centre-cropped.
    pub fn images(&self, i: usize, width: u32, height: u32, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((self.image(i, true, width, height, device)?, self.image(i, false, width, height, device)?))
    }

    /// One image of pair `i` (the chosen one when `chosen`), as [`Self::images`].
    pub fn image(&self, i: usize, chosen: bool, width: u32, height: u32, device: &Device) -> Result<Tensor> {
        let item = self.items.get(i).ok_or_else(|| Error::invalid(format!("{}: no pair {i}", self.path.display())))?;
        let (bytes, column) = if chosen { (&item.chosen, item.chosen_column) } else { (&item.rejected, item.rejected_column) };
        let img = decode(bytes).map_err(|m| Error::data(&self.path, None, format!("row {}, column `{column}`: {m}", item.row)))?;
        image_to_tensor(&resize_center_crop(&img, width, height), device)
    }
}

fn describe(f: Option<&Field>) -> String {
    match f {
        None | Some(Field::Null) => "null".into(),
        Some(other) => format!("{other:?}").chars().take(40).collect(),
    }
}

fn decode(bytes: &[u8]) -> std::result::Result<image::DynamicImage, String> {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).map_err(|e| format!("cannot decode JPEG: {e}"))
}

/// Scale `img` so it covers `width` x `height` (the short side fits), then
/// cut the centre: diffusers' training scripts' `Resize(resolution)` +
/// `CenterCrop(resolution)`. Triangle is bilinear with antialiasing, as
/// torchvision's bilinear resize of PIL images. Images already at the size
/// are passed through untouched.
pub fn resize_center_crop(img: &image::DynamicImage, width: u32, height: u32) -> image::DynamicImage {
    let (w, h) = (img.width(), img.height());
    if (w, h) == (width, height) {
        return img.clone();
    }
    let scale = f64::max(width as f64 / w as f64, height as f64 / h as f64);
    let (sw, sh) = (((w as f64 * scale).round() as u32).max(width), ((h as f64 * scale).round() as u32).max(height));
    let resized = img.resize_exact(sw, sh, image::imageops::FilterType::Triangle);
    resized.crop_imm((sw - width) / 2, (sh - height) / 2, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pickapic").join(name)
    }

    #[test]
    fn labels_pick_chosen_and_ties_are_skipped() {
        assert_eq!(preferred_first(1.0), Ok(Some(true)));
        assert_eq!(preferred_first(0.0), Ok(Some(false)));
        assert_eq!(preferred_first(0.5), Ok(None));
        assert!(preferred_first(0.7).unwrap_err().contains("0.7"));
        let p = ParquetPairs::open(&fixture("tiny.parquet")).unwrap();
        assert_eq!(p.ties, 1);
        let rows: Vec<(usize, &str, &str)> = p.items.iter().map(|i| (i.row, i.prompt.as_str(), i.chosen_column)).collect();
        assert_eq!(
            rows,
            [(0, "an emoji of a square", "jpg_0"), (1, "an emoji of a square", "jpg_1"), (3, "an emoji of a cat", "jpg_0"), (4, "an emoji of a cat", "jpg_1")]
        );
        // Row 0 prefers the red image 0, row 1 the red image 1: both chosen red.
        let dev = Device::Cpu;
        for i in 0..2 {
            let (c, r) = p.images(i, 16, 16, &dev).unwrap();
            assert_eq!(c.dims(), [3, 16, 16]);
            let centre = |t: &Tensor| t.narrow(1, 8, 1).unwrap().narrow(2, 8, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (cc, rc) = (centre(&c), centre(&r));
            assert!(cc[0] > 0.5 && cc[2] < -0.5, "chosen is red: {cc:?}");
            assert!(rc[2] > 0.5 && rc[0] < -0.5, "rejected is blue: {rc:?}");
        }
        // Row 3 is 24x20: scaled to 19x16 and centre-cropped to 16x16.
        let (c, _) = p.images(2, 16, 16, &dev).unwrap();
        assert_eq!(c.dims(), [3, 16, 16]);
    }

    #[test]
    fn resize_covers_then_crops_the_centre() {
        // 8x4 image, left half black, right half white: resized to cover 2x2
        // (4x2 then crop columns 1..3), one black and one white column.
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(8, 4, |x, _| if x < 4 { image::Rgb([0; 3]) } else { image::Rgb([255; 3]) }));
        let out = resize_center_crop(&img, 2, 2).to_rgb8();
        assert_eq!(out.dimensions(), (2, 2));
        assert!(out.get_pixel(0, 0)[0] < 64 && out.get_pixel(1, 1)[0] > 191, "{:?}", out.as_raw());
        assert_eq!(resize_center_crop(&img, 8, 4).to_rgb8().as_raw(), img.to_rgb8().as_raw());
    }

    #[test]
    fn errors_name_file_row_and_column() {
        let e = ParquetPairs::open(&fixture("bad-jpeg.parquet")).unwrap_err().to_string();
        assert!(e.contains("bad-jpeg.parquet") && e.contains("row 1, column `jpg_1`") && e.contains("JPEG"), "{e}");
        let e = ParquetPairs::open(&fixture("no-label.parquet")).unwrap_err().to_string();
        assert!(e.contains("no-label.parquet") && e.contains("missing column `label_0`") && e.contains("jpg_1"), "{e}");
        let e = ParquetPairs::open(&fixture("../sd21-tiny/model_index.json")).unwrap_err().to_string();
        assert!(e.contains("model_index.json") && e.contains("parquet"), "{e}");
        let e = ParquetPairs::open(&fixture("missing.parquet")).unwrap_err().to_string();
        assert!(e.contains("missing.parquet"), "{e}");
    }
}
