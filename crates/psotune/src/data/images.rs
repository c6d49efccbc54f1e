//! Plain image folders (concept customization's instance images) and the
//! size check every reader shares.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// The image files directly in `dir`, sorted by name; none is an error.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::data(dir, None, "not a directory"));
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        if ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            out.push(path);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::data(dir, None, "no images (png, jpg, jpeg, webp, bmp)"));
    }
    Ok(out)
}

/// Check that `image` opens and is `width` x `height`; errors name
/// `source` and `line` (the manifest line that lists it) and the image.
pub fn check_image_size(image: &Path, width: u32, height: u32, source: &Path, line: Option<usize>) -> Result<()> {
    let (w, h) = image::image_dimensions(image).map_err(|e| Error::data(source, line, format!("cannot read image {}: {e}", image.display())))?;
    if (w, h) != (width, height) {
        return Err(Error::data(source, line, format!("image {} is {w}x{h}, the model needs {width}x{height}", image.display())));
    }
    Ok(())
}
