//! Scratch directories that remove themselves: the evaluation's exported
//! LoRAs, a reward's working files, and every test that writes files.
//! A run that fails halfway leaves nothing behind in the temp directory.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system temp directory, removed with
/// everything in it when dropped. Derefs to its path.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// `<temp>/<prefix>-<pid>-<n>`; `n` counts up within the process, so
    /// two scratch directories never share a path.
    pub fn new(prefix: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        // A leftover from a killed process with a recycled pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_empty_and_removed_on_drop() {
        let (a, b) = (ScratchDir::new("psotune-scratch").unwrap(), ScratchDir::new("psotune-scratch").unwrap());
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::read_dir(&*a).unwrap().count(), 0);
        std::fs::create_dir_all(a.join("x/y")).unwrap();
        std::fs::write(a.join("x/y/f"), b"1").unwrap();
        let kept = a.to_path_buf();
        drop(a);
        assert!(!kept.exists());
        assert!(b.is_dir());
    }
}
