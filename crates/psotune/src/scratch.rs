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

/// One file alone in its own [`ScratchDir`] (a config a test writes and
/// reads back); derefs to the file's path.
#[derive(Debug)]
pub struct ScratchFile {
    _dir: ScratchDir,
    path: PathBuf,
}

impl ScratchFile {
    /// `<scratch dir>/<name>` holding `contents`.
    pub fn new(prefix: &str, name: &str, contents: impl AsRef<[u8]>) -> Result<Self> {
        let dir = ScratchDir::new(prefix)?;
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| Error::io(&path, e))?;
        Ok(ScratchFile { _dir: dir, path })
    }
}

impl Deref for ScratchFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchFile {
    fn as_ref(&self) -> &Path {
        &self.path
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

    #[test]
    fn a_scratch_file_takes_its_folder_with_it() {
        let f = ScratchFile::new("psotune-scratch-file", "config.json", "{}").unwrap();
        assert_eq!(std::fs::read_to_string(&*f).unwrap(), "{}");
        let dir = f.parent().unwrap().to_path_buf();
        drop(f);
        assert!(!dir.exists());
    }
}
