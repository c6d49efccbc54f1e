//! Offline preference pairs: a JSONL manifest, one
//! `{"prompt": ..., "chosen": ..., "rejected": ...}` per line, image paths
//! relative to the manifest's folder (or absolute).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One pair of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct PairItem {
    pub prompt: String,
    pub chosen: PathBuf,
    pub rejected: PathBuf,
    /// 1-based line in the manifest.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct PairManifest {
    pub path: PathBuf,
    pub items: Vec<PairItem>,
}

impl PairManifest {
    /// Read and check the manifest: every line a JSON object with non-empty
    /// string fields, every image present; at least one pair.
    pub fn open(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut items = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let line = i + 1;
            let err = |msg: String| Error::data(path, Some(line), msg);
            let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| err(format!("invalid JSON: {e}")))?;
            let serde_json::Value::Object(obj) = value else {
                return Err(err("expected a JSON object".into()));
            };
            let field = |key: &str| match obj.get(key) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(serde_json::Value::String(_)) => Err(err(format!("`{key}` is empty"))),
                Some(other) => Err(err(format!("`{key}` must be a string, got {other}"))),
                None => Err(err(format!("missing `{key}`"))),
            };
            let prompt = field("prompt")?;
            let image = |key: &str| -> Result<PathBuf> {
                let p = dir.join(field(key)?);
                if !p.is_file() {
                    return Err(err(format!("{key} image {} does not exist", p.display())));
                }
                Ok(p)
            };
            let (chosen, rejected) = (image("chosen")?, image("rejected")?);
            items.push(PairItem { prompt, chosen, rejected, line });
        }
        if items.is_empty() {
            return Err(Error::data(path, None, "the manifest lists no pairs"));
        }
        Ok(Self { path: path.to_path_buf(), items })
    }

    /// Check that every image opens and is `width` x `height`.
    pub fn check_size(&self, width: u32, height: u32) -> Result<()> {
        for item in &self.items {
            for p in [&item.chosen, &item.rejected] {
                super::check_image_size(p, width, height, &self.path, Some(item.line))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_errors_name_file_and_line() {
        let d = crate::scratch::ScratchDir::new("psotune-pairs").unwrap();
        image::RgbImage::new(4, 4).save(d.join("a.png")).unwrap();
        image::RgbImage::new(4, 2).save(d.join("b.png")).unwrap();
        let m = d.join("pairs.jsonl");
        let ok = r#"{"prompt":"p","chosen":"a.png","rejected":"a.png"}"#;
        std::fs::write(&m, format!("{ok}\n\n{ok}\n")).unwrap();
        let pairs = PairManifest::open(&m).unwrap();
        assert_eq!((pairs.items.len(), pairs.items[1].line), (2, 3));
        pairs.check_size(4, 4).unwrap();
        for (body, want) in [
            (r#"{"prompt":"p","chosen":"a.png"}"#, "missing `rejected`"),
            (r#"{"prompt":"","chosen":"a.png","rejected":"a.png"}"#, "`prompt` is empty"),
            (r#"{"prompt":"p","chosen":"zz.png","rejected":"a.png"}"#, "does not exist"),
            ("[1]", "JSON object"),
        ] {
            std::fs::write(&m, format!("{ok}\n{body}\n")).unwrap();
            let e = PairManifest::open(&m).unwrap_err().to_string();
            assert!(e.contains("pairs.jsonl:2") && e.contains(want), "{e}");
        }
        std::fs::write(&m, format!("{ok}\n{}\n", ok.replace("\"rejected\":\"a.png\"", "\"rejected\":\"b.png\""))).unwrap();
        let e = PairManifest::open(&m).unwrap().check_size(4, 4).unwrap_err().to_string();
        assert!(e.contains("pairs.jsonl:2") && e.contains("4x2"), "{e}");
        std::fs::write(&m, "\n").unwrap();
        assert!(PairManifest::open(&m).unwrap_err().to_string().contains("no pairs"));
    }
}
