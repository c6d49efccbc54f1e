//! A folder of captioned images, in the common image-folder convention:
//! either a `metadata.jsonl` whose lines hold `file_name` (relative to the
//! folder) and `text`, plus any other fields, or image files each with a
//! `.txt` sidecar of the same stem holding the caption.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::pipeline::image::load_image;

pub const METADATA_FILE: &str = "metadata.jsonl";
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// One captioned image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageItem {
    pub path: PathBuf,
    pub text: String,
    /// The other fields of its `metadata.jsonl` line (empty for sidecars).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Where it was declared: the manifest line, or the sidecar file.
    pub source: PathBuf,
    pub line: Option<usize>,
}

impl ImageItem {
    /// A string field of the manifest line (`style`, `concept`, ...).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(|v| v.as_str())
    }

    /// Whether every field named in `select` has the given value (the
    /// `select = { style = "noto" }` of configs and `--prompts` of the CLI).
    pub fn matches(&self, select: &std::collections::BTreeMap<String, String>) -> bool {
        select.iter().all(|(k, v)| self.field(k) == Some(v.as_str()))
    }

    fn error(&self, msg: impl Into<String>) -> Error {
        Error::data(&self.source, self.line, msg)
    }
}

#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub items: Vec<ImageItem>,
}

impl ImageFolder {
    /// Read `dir/metadata.jsonl` if present, else the images with `.txt`
    /// sidecars. Every listed image must exist; an empty result is an error.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::data(dir, None, "not a directory"));
        }
        let manifest = dir.join(METADATA_FILE);
        let items = if manifest.is_file() { read_manifest(dir, &manifest)? } else { read_sidecars(dir)? };
        if items.is_empty() {
            let what = if manifest.is_file() { "metadata.jsonl lists no images" } else { "no images with .txt captions" };
            return Err(Error::data(dir, None, what));
        }
        Ok(ImageFolder { root: dir.to_path_buf(), items })
    }

    /// Keep the items for which `keep` is true (an empty result is an error
    /// naming `what`, so a filter that matches nothing does not train on nothing).
    pub fn filter(mut self, what: &str, keep: impl Fn(&ImageItem) -> bool) -> Result<Self> {
        self.items.retain(|i| keep(i));
        if self.items.is_empty() {
            return Err(Error::data(&self.root, None, format!("no images left after selecting {what}")));
        }
        Ok(self)
    }

    /// Keep the items that match `select` (all of them when it is empty);
    /// none left is an error naming the selection.
    pub fn select(self, select: &std::collections::BTreeMap<String, String>) -> Result<Self> {
        if select.is_empty() {
            return Ok(self);
        }
        self.filter(&describe_selection(select), |i| i.matches(select))
    }

    /// Check that every image opens and is `width` x `height` (reads only
    /// the headers).
    pub fn check_size(&self, width: u32, height: u32) -> Result<()> {
        for item in &self.items {
            let (w, h) = image::image_dimensions(&item.path)
                .map_err(|e| item.error(format!("cannot read image {}: {e}", item.path.display())))?;
            if (w, h) != (width, height) {
                return Err(item.error(format!(
                    "image {} is {w}x{h}, the model needs {width}x{height}",
                    item.path.display()
                )));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn read_manifest(dir: &Path, manifest: &Path) -> Result<Vec<ImageItem>> {
    let text = std::fs::read_to_string(manifest).map_err(|e| Error::io(manifest, e))?;
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = Some(i + 1);
        if raw.trim().is_empty() {
            continue;
        }
        let err = |msg: String| Error::data(manifest, line, msg);
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err(err("expected a JSON object".into()));
        };
        let mut take_str = |key: &str| match obj.remove(key) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s),
            Some(serde_json::Value::String(_)) => Err(err(format!("`{key}` is empty"))),
            Some(other) => Err(err(format!("`{key}` must be a string, got {other}"))),
            None => Err(err(format!("missing `{key}`"))),
        };
        let file_name = take_str("file_name")?;
        let text = take_str("text")?;
        let path = dir.join(&file_name);
        if !path.is_file() {
            return Err(err(format!("image {} does not exist", path.display())));
        }
        items.push(ImageItem { path, text, extra: obj, source: manifest.to_path_buf(), line });
    }
    Ok(items)
}

fn read_sidecars(dir: &Path) -> Result<Vec<ImageItem>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut images = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        if ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            images.push(path);
        }
    }
    images.sort();
    let mut items = Vec::with_capacity(images.len());
    for path in images {
        let sidecar = path.with_extension("txt");
        let text = std::fs::read_to_string(&sidecar)
            .map_err(|_| Error::data(&path, None, format!("no caption: {} is missing", sidecar.display())))?;
        let text = text.trim().to_string();
        if text.is_empty() {
            return Err(Error::data(&sidecar, None, "caption is empty"));
        }
        items.push(ImageItem { path, text, extra: Default::default(), source: sidecar, line: None });
    }
    Ok(items)
}

/// Load images as one [N, 3, H, W] f32 tensor in [-1, 1]; every image must
/// have the size of the first.
pub fn load_image_batch(items: &[&ImageItem], device: &Device) -> Result<Tensor> {
    let mut tensors = Vec::with_capacity(items.len());
    for item in items {
        let t = load_image(&item.path, device)?;
        if let Some(first) = tensors.first() {
            let (a, b): (&Tensor, &Tensor) = (first, &t);
            if a.dims() != b.dims() {
                return Err(item.error(format!(
                    "image {} has shape {:?}, earlier images {:?}",
                    item.path.display(),
                    b.dims(),
                    a.dims()
                )));
            }
        }
        tensors.push(t);
    }
    if tensors.is_empty() {
        return Err(Error::invalid("load_image_batch: no images"));
    }
    Ok(Tensor::stack(&tensors, 0)?)
}

/// `select` as people write it: `split = "train", style = "noto"`.
pub fn describe_selection(select: &std::collections::BTreeMap<String, String>) -> String {
    if select.is_empty() {
        return "(everything)".into();
    }
    select.iter().map(|(k, v)| format!("{k} = {v:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    fn temp_dir(name: &str) -> ScratchDir {
        ScratchDir::new(&format!("psotune-data-{name}")).unwrap()
    }

    fn png(path: &Path, w: u32, h: u32) {
        image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10])).save(path).unwrap();
    }

    #[test]
    fn manifest_keeps_extra_fields_and_checks_sizes() {
        let d = temp_dir("manifest");
        png(&d.join("a.png"), 4, 4);
        png(&d.join("b.png"), 4, 3);
        std::fs::write(
            d.join(METADATA_FILE),
            "{\"file_name\":\"a.png\",\"text\":\"red\",\"style\":\"x\"}\n\n{\"file_name\":\"b.png\",\"text\":\"short\"}\n",
        )
        .unwrap();
        let f = ImageFolder::open(&d).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.items[0].field("style"), Some("x"));
        assert_eq!(f.items[1].line, Some(3));
        let e = f.check_size(4, 4).unwrap_err().to_string();
        assert!(e.contains("metadata.jsonl:3") && e.contains("4x3"), "{e}");
        let only_a = f.filter("style x", |i| i.field("style") == Some("x")).unwrap();
        let batch = load_image_batch(&only_a.items.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap();
        assert_eq!(batch.dims(), &[1, 3, 4, 4]);
        let v = batch.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - (200.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn manifest_errors_name_the_line() {
        let d = temp_dir("bad");
        png(&d.join("a.png"), 4, 4);
        let cases = [
            ("{\"file_name\":\"a.png\"}", "metadata.jsonl:1: missing `text`"),
            ("{\"file_name\":\"a.png\",\"text\":\"\"}", "`text` is empty"),
            ("{\"file_name\":\"zz.png\",\"text\":\"t\"}", "does not exist"),
            ("not json", "invalid JSON"),
            ("{\"file_name\":\"a.png\",\"text\":3}", "must be a string"),
        ];
        for (body, want) in cases {
            std::fs::write(d.join(METADATA_FILE), format!("{{\"file_name\":\"a.png\",\"text\":\"ok\"}}\n{body}\n")).unwrap();
            let e = ImageFolder::open(&d).unwrap_err().to_string();
            assert!(e.contains(want.trim_start_matches("metadata.jsonl:1: ")), "{e} / {want}");
            assert!(e.contains("metadata.jsonl:2"), "{e}");
        }
    }

    #[test]
    fn sidecars_and_empty_folders() {
        let d = temp_dir("sidecar");
        assert!(ImageFolder::open(&d).unwrap_err().to_string().contains("no images"));
        png(&d.join("b.png"), 2, 2);
        png(&d.join("a.png"), 2, 2);
        std::fs::write(d.join("a.txt"), "  a red square\n").unwrap();
        let e = ImageFolder::open(&d).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("no caption"), "{e}");
        std::fs::write(d.join("b.txt"), "b").unwrap();
        let f = ImageFolder::open(&d).unwrap();
        assert_eq!(f.items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(), ["a red square", "b"]);
        assert!(f.filter("nothing", |_| false).unwrap_err().to_string().contains("nothing"));
    }
}
