//! Turning decoded images into the pixel values a CLIP-family scorer
//! expects, exactly as its reference does:
//!
//! 1. [`quantize`]: [-1, 1] floats -> 8-bit RGB, the rounding `save_png`
//!    uses (diffusers' `numpy_to_pil`), so that scoring in process and
//!    scoring the saved PNGs agree bit for bit;
//! 2. resize (Pillow, [`super::resample`]) of the shortest edge, or to a
//!    fixed size;
//! 3. centre crop, whose offset rounds down in transformers'
//!    `CLIPImageProcessor` and half-to-even (Python's `round`) in
//!    torchvision's `CenterCrop`: the two differ by a pixel on odd margins;
//! 4. scale to [0, 1] and normalise by the mean and std.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::resample::{resize, Filter, RgbU8};
use crate::error::{read_json, Error, Result};
use crate::models::open_clip::{OpenClipPreprocess, OPENAI_MEAN, OPENAI_STD};

/// [N, 3, H, W] values in [-1, 1] -> N 8-bit images, as
/// `save_png((x / 2 + 0.5).clamp(0, 1))` writes them.
pub fn quantize(images: &Tensor) -> Result<Vec<RgbU8>> {
    let (n, c, h, w) = images.dims4().map_err(|_| Error::invalid(format!("rewards take [N, 3, H, W] images, got shape {:?}", images.dims())))?;
    if c != 3 || h == 0 || w == 0 {
        return Err(Error::invalid(format!("rewards take [N, 3, H, W] RGB images, got shape {:?}", images.dims())));
    }
    let v: Vec<f32> = images.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(Error::invalid(format!("images hold a non-finite value ({bad})")));
    }
    let plane = h * w;
    Ok((0..n)
        .map(|i| {
            let img = &v[i * 3 * plane..(i + 1) * 3 * plane];
            let data = (0..plane)
                .flat_map(|p| (0..3).map(move |ch| img[ch * plane + p]))
                .map(|x| ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            RgbU8 { width: w, height: h, data }
        })
        .collect())
}

/// How the first resize sizes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side becomes this; the longer keeps the aspect ratio,
    /// truncated (`int(size * long / short)`, in transformers and torchvision alike).
    ShortestEdge(usize),
    /// Exactly this size, aspect ratio ignored.
    Exact { height: usize, width: usize },
}

/// How a centre crop's offset is rounded when the margin is odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropRounding {
    /// transformers' `center_crop`: `(size - crop) // 2`.
    Floor,
    /// torchvision's `CenterCrop`: `int(round((size - crop) / 2.0))`.
    HalfEven,
}

/// One scorer's preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocess {
    pub resize: Option<Resize>,
    pub filter: Filter,
    /// (height, width).
    pub crop: Option<(usize, usize)>,
    pub crop_rounding: CropRounding,
    /// Multiplies the 0-255 values (1/255); `None` leaves them as they are.
    pub rescale: Option<f64>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub normalize: bool,
}

impl ImagePreprocess {
    /// transformers' `CLIPImageProcessor` defaults for a model whose vision
    /// tower takes `image_size` pixels (what the processor of every CLIP
    /// checkpoint says, with 224).
    pub fn clip_processor(image_size: usize) -> Self {
        Self {
            resize: Some(Resize::ShortestEdge(image_size)),
            filter: Filter::Bicubic,
            crop: Some((image_size, image_size)),
            crop_rounding: CropRounding::Floor,
            rescale: Some(1.0 / 255.0),
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            normalize: true,
        }
    }

    /// torchvision's `Resize(n, bicubic) + CenterCrop(n) + ToTensor +
    /// Normalize`: OpenAI CLIP's own `_transform` (clip/clip.py) and
    /// open_clip's `image_transform(is_train=False)` in `shortest` mode.
    pub fn torchvision(image_size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self { crop_rounding: CropRounding::HalfEven, mean, std, ..Self::clip_processor(image_size) }
    }

    /// open_clip's eval transform for its `preprocess_cfg`.
    pub fn open_clip(image_size: usize, cfg: &OpenClipPreprocess) -> Self {
        let mut p = Self::torchvision(image_size, cfg.mean, cfg.std);
        if cfg.interpolation == "bilinear" {
            p.filter = Filter::Bilinear;
        }
        if cfg.resize_mode == "squash" {
            p.resize = Some(Resize::Exact { height: image_size, width: image_size });
            p.crop = None;
        }
        p
    }

    /// Read a transformers `preprocessor_config.json` (`CLIPImageProcessor`
    /// keys; others are ignored, as transformers ignores them).
    pub fn from_processor_config(path: &Path) -> Result<Self> {
        let raw: Value = read_json(path)?;
        let bad = |msg: String| Error::config(path, msg);
        let flag = |key: &str| -> Result<bool> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(true),
                Some(v) => v.as_bool().ok_or_else(|| bad(format!("{key} must be true or false, got {v}"))),
            }
        };
        let mut p = Self::clip_processor(224);
        p.resize = if flag("do_resize")? {
            Some(match raw.get("size") {
                None | Some(Value::Null) => Resize::ShortestEdge(224),
                Some(v) => size_of(v).ok_or_else(|| bad(format!("size {v} is not supported (expected {{\"shortest_edge\": N}} or {{\"height\": H, \"width\": W}})")))?,
            })
        } else {
            None
        };
        p.filter = match raw.get("resample") {
            None | Some(Value::Null) => Filter::Bicubic,
            Some(v) => match v.as_u64() {
                Some(3) => Filter::Bicubic,
                Some(2) => Filter::Bilinear,
                _ => return Err(bad(format!("resample {v} is not supported (3 = bicubic, 2 = bilinear)"))),
            },
        };
        p.crop = if flag("do_center_crop")? {
            Some(match raw.get("crop_size") {
                None | Some(Value::Null) => (224, 224),
                Some(v) => match size_of(v) {
                    Some(Resize::Exact { height, width }) => (height, width),
                    // an int crop size is square
                    _ => match v.as_u64() {
                        Some(n) if n > 0 => (n as usize, n as usize),
                        _ => return Err(bad(format!("crop_size {v} is not supported"))),
                    },
                },
            })
        } else {
            None
        };
        p.rescale = if flag("do_rescale")? {
            Some(match raw.get("rescale_factor") {
                None | Some(Value::Null) => 1.0 / 255.0,
                Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(format!("rescale_factor must be a number, got {v}")))?,
            })
        } else {
            None
        };
        p.normalize = flag("do_normalize")?;
        for (key, out) in [("image_mean", &mut p.mean), ("image_std", &mut p.std)] {
            match raw.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => *out = three(v).ok_or_else(|| bad(format!("{key} must be one number or three, got {v}")))?,
            }
        }
        if p.std.contains(&0.0) {
            return Err(bad("image_std must be non-zero".into()));
        }
        Ok(p)
    }

    /// The (height, width) every output has, if fixed.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        self.crop.or(match self.resize {
            Some(Resize::Exact { height, width }) => Some((height, width)),
            _ => None,
        })
    }

    /// One image -> [3, H, W] values, channel-major.
    pub fn apply(&self, img: &RgbU8) -> Vec<f32> {
        let img = match self.resize {
            Some(r) => {
                let (w, h) = resized_size(img.width, img.height, r);
                resize(img, w, h, self.filter)
            }
            None => img.clone(),
        };
        let (ch, cw) = self.crop.unwrap_or((img.height, img.width));
        let top = crop_offset(img.height, ch, self.crop_rounding);
        let left = crop_offset(img.width, cw, self.crop_rounding);
        let mut out = vec![0f32; 3 * ch * cw];
        for c in 0..3 {
            for y in 0..ch {
                for x in 0..cw {
                    let (sy, sx) = (y as isize + top, x as isize + left);
                    // Outside the image (a crop larger than it): zero, the
                    // padding both libraries use.
                    let v = if sy >= 0 && sx >= 0 && (sy as usize) < img.height && (sx as usize) < img.width {
                        img.get(sx as usize, sy as usize, c)
                    } else {
                        0
                    };
                    // f64 product, then f32: transformers' `rescale`; equal
                    // to torchvision's f32 division for all 256 values (tested).
                    let mut v = match self.rescale {
                        Some(f) => (f64::from(v) * f) as f32,
                        None => f32::from(v),
                    };
                    if self.normalize {
                        v = (v - self.mean[c]) / self.std[c];
                    }
                    out[(c * ch + y) * cw + x] = v;
                }
            }
        }
        out
    }

    /// Images -> [N, 3, H, W] pixel values on `device`. Every output must
    /// have the same size (a crop or an exact resize guarantees it).
    pub fn pixel_values(&self, images: &[RgbU8], device: &Device) -> Result<Tensor> {
        let mut data = Vec::new();
        let mut size = None;
        for img in images {
            let (h, w) = self.output_size().unwrap_or((img.height, img.width));
            if *size.get_or_insert((h, w)) != (h, w) {
                return Err(Error::invalid("images of different sizes cannot form one batch without a crop"));
            }
            data.extend(self.apply(img));
        }
        let (h, w) = size.unwrap_or((0, 0));
        Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
    }
}

/// (width, height) after a resize, as transformers' and torchvision's
/// `get_resize_output_image_size` compute it.
pub fn resized_size(width: usize, height: usize, r: Resize) -> (usize, usize) {
    match r {
        Resize::Exact { height, width } => (width, height),
        Resize::ShortestEdge(s) => {
            let (short, long) = if width <= height { (width, height) } else { (height, width) };
            // int(s * long / short): an exact product, one correctly rounded
            // division, truncation; as Python computes it.
            let new_long = ((s * long) as f64 / short as f64) as usize;
            if width <= height {
                (s, new_long)
            } else {
                (new_long, s)
            }
        }
    }
}

/// Where a crop of `crop` starts in `size` (negative: the image is smaller
/// and sits inside zero padding).
pub fn crop_offset(size: usize, crop: usize, rounding: CropRounding) -> isize {
    let margin = size as isize - crop as isize;
    match rounding {
        // Python's floor division, which also gives transformers' padding
        // offset (-ceil(pad / 2)) for negative margins.
        CropRounding::Floor => margin.div_euclid(2),
        CropRounding::HalfEven => {
            if margin < 0 {
                // torchvision pads floor(pad / 2) before, then crops at 0.
                -((-margin) / 2)
            } else if margin % 2 == 0 {
                margin / 2
            } else {
                let k = margin / 2; // margin / 2 = k + 0.5, rounded to even
                if k % 2 == 0 {
                    k
                } else {
                    k + 1
                }
            }
        }
    }
}

/// A transformers size dict (or a bare int meaning the shortest edge).
fn size_of(v: &Value) -> Option<Resize> {
    let pos = |v: Option<&Value>| v.and_then(Value::as_u64).filter(|&n| n > 0).map(|n| n as usize);
    if let Some(n) = pos(Some(v)) {
        return Some(Resize::ShortestEdge(n));
    }
    let obj = v.as_object()?;
    match (pos(obj.get("shortest_edge")), pos(obj.get("height")), pos(obj.get("width"))) {
        (Some(s), None, None) if obj.get("longest_edge").is_none_or(Value::is_null) => Some(Resize::ShortestEdge(s)),
        (None, Some(height), Some(width)) => Some(Resize::Exact { height, width }),
        _ => None,
    }
}

fn three(v: &Value) -> Option<[f32; 3]> {
    match v {
        Value::Number(n) => Some([n.as_f64()? as f32; 3]),
        Value::Array(a) if a.len() == 3 => Some([a[0].as_f64()? as f32, a[1].as_f64()? as f32, a[2].as_f64()? as f32]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_like_each_library() {
        // even margins agree
        assert_eq!(crop_offset(40, 32, CropRounding::Floor), 4);
        assert_eq!(crop_offset(40, 32, CropRounding::HalfEven), 4);
        // margin 23: floor 11, round(11.5) = 12; margin 21: round(10.5) = 10
        assert_eq!(crop_offset(55, 32, CropRounding::Floor), 11);
        assert_eq!(crop_offset(55, 32, CropRounding::HalfEven), 12);
        assert_eq!(crop_offset(53, 32, CropRounding::HalfEven), 10);
        // smaller than the crop: transformers pads ceil(5/2) = 3 before,
        // torchvision floor(5/2) = 2
        assert_eq!(crop_offset(27, 32, CropRounding::Floor), -3);
        assert_eq!(crop_offset(27, 32, CropRounding::HalfEven), -2);
    }

    #[test]
    fn shortest_edge_sizes_truncate() {
        assert_eq!(resized_size(45, 30, Resize::ShortestEdge(32)), (48, 32));
        assert_eq!(resized_size(30, 52, Resize::ShortestEdge(32)), (32, 55)); // 55.47
        assert_eq!(resized_size(37, 37, Resize::ShortestEdge(224)), (224, 224));
        assert_eq!(resized_size(1024, 576, Resize::ShortestEdge(224)), (398, 224)); // 398.2
    }

    /// One rescale path serves both libraries: f64 multiply then f32 equals
    /// torchvision's f32 division by 255 for every 8-bit value.
    #[test]
    fn rescale_matches_f32_division_for_all_bytes() {
        for v in 0u8..=255 {
            assert_eq!((f64::from(v) * (1.0 / 255.0)) as f32, f32::from(v) / 255.0, "{v}");
        }
    }

    /// Values that are already 8-bit survive the round trip exactly, and
    /// the rounding is save_png's (half away from zero).
    #[test]
    fn quantize_inverts_the_byte_to_model_space_map() {
        let bytes: Vec<u8> = (0..=255).collect();
        let vals: Vec<f32> = bytes.iter().map(|&b| f32::from(b) / 255.0 * 2.0 - 1.0).collect();
        let t = Tensor::from_vec([vals.clone(), vals.clone(), vals].concat(), (1, 3, 1, 256), &Device::Cpu).unwrap();
        let q = quantize(&t).unwrap();
        let red: Vec<u8> = (0..256).map(|x| q[0].get(x, 0, 0)).collect();
        assert_eq!(red, bytes);
        let t = Tensor::from_vec(vec![-3.0f32, 2.0, 0.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(quantize(&t).unwrap()[0].data, vec![0, 255, 128]);
        let nan = Tensor::from_vec(vec![f32::NAN, 0.0, 0.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert!(quantize(&nan).unwrap_err().to_string().contains("non-finite"));
        let gray = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(quantize(&gray).unwrap_err().to_string().contains("[1, 1, 2, 2]"));
    }

    #[test]
    fn processor_config_variants_and_errors() {
        let dir = crate::scratch::ScratchDir::new("psotune-preprocess").unwrap();
        let p = dir.join("preprocessor_config.json");
        // transformers 4 era: int sizes
        std::fs::write(&p, r#"{"size": 224, "crop_size": 224, "do_normalize": true, "feature_extractor_type": "CLIPFeatureExtractor"}"#).unwrap();
        let c = ImagePreprocess::from_processor_config(&p).unwrap();
        assert_eq!(c, ImagePreprocess::clip_processor(224));
        std::fs::write(&p, r#"{"size": {"height": 20, "width": 30}, "do_center_crop": false, "image_mean": 0.5, "image_std": [1, 2, 3]}"#).unwrap();
        let c = ImagePreprocess::from_processor_config(&p).unwrap();
        assert_eq!((c.resize, c.crop, c.output_size()), (Some(Resize::Exact { height: 20, width: 30 }), None, Some((20, 30))));
        assert_eq!((c.mean, c.std), ([0.5; 3], [1.0, 2.0, 3.0]));
        std::fs::write(&p, r#"{"resample": 1}"#).unwrap();
        let msg = ImagePreprocess::from_processor_config(&p).unwrap_err().to_string();
        assert!(msg.contains("preprocessor_config.json") && msg.contains("resample"), "{msg}");
        std::fs::write(&p, r#"{"size": {"shortest_edge": 224, "longest_edge": 300}}"#).unwrap();
        assert!(ImagePreprocess::from_processor_config(&p).unwrap_err().to_string().contains("size"));
    }
}
