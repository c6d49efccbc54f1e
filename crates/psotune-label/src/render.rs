//! Sampling the pairs' images.

use std::path::{Path, PathBuf};

use psotune::pipeline::{image::save_png, Pipeline, SampleRequest};

use crate::{Error, Result};

/// Something that draws the image of a prompt and seed into a PNG file.
pub trait Render: Send {
    fn render(&mut self, prompt: &str, seed: u64, out: &Path) -> Result<()>;
}

/// The model's own samples: one image per seed, at its own steps unless
/// `steps` says otherwise (reproducible with `psotune sample --seed`).
pub struct PipelineRender {
    pub pipe: Pipeline,
    pub steps: Option<usize>,
}

impl Render for PipelineRender {
    fn render(&mut self, prompt: &str, seed: u64, out: &Path) -> Result<()> {
        let req = SampleRequest { prompts: vec![prompt.to_string()], steps: self.steps, seed, ..Default::default() };
        let images = self.pipe.sample(&req)?.images;
        // Written beside and renamed: an image on disk is always whole, so a
        // restart may trust any file it finds.
        let tmp = tmp_path(out);
        save_png(&images.get(0).map_err(psotune::Error::from)?, &tmp)?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    }
}

pub(crate) fn tmp_path(out: &Path) -> PathBuf {
    out.with_extension("tmp.png")
}
