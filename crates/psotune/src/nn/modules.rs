//! Walking a model's `Linear` and `Conv2d` layers by their dotted module
//! path (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), the
//! path PyTorch's `named_modules()` gives and that LoRA files key on.

use candle_core::Result;

use super::{Conv2d, Linear};

/// One layer a visitor can wrap with an adapter or make trainable.
pub enum LayerMut<'a> {
    Linear(&'a mut Linear),
    Conv2d(&'a mut Conv2d),
}

impl LayerMut<'_> {
    pub fn is_conv(&self) -> bool {
        matches!(self, LayerMut::Conv2d(_))
    }
}

/// A model (or sub-module) whose `Linear` / `Conv2d` layers can be visited,
/// in the order the checkpoint lists its modules.
pub trait Modules {
    /// Calls `f(path, layer)` for every layer, `path` being `prefix` joined
    /// with the layer's own dotted path ("" for the model root).
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>) -> Result<()>) -> Result<()>;
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Modules for Linear {
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>) -> Result<()>) -> Result<()> {
        f(prefix, LayerMut::Linear(self))
    }
}

impl Modules for Conv2d {
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>) -> Result<()>) -> Result<()> {
        f(prefix, LayerMut::Conv2d(self))
    }
}

impl<T: Modules> Modules for Option<T> {
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>) -> Result<()>) -> Result<()> {
        match self {
            Some(m) => m.visit_mut(prefix, f),
            None => Ok(()),
        }
    }
}

/// A `ModuleList`: children named `prefix.0`, `prefix.1`, ...
impl<T: Modules> Modules for Vec<T> {
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>) -> Result<()>) -> Result<()> {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_mut(&join(prefix, &i.to_string()), f)?;
        }
        Ok(())
    }
}

/// Every layer's path and kind (`true` for a convolution), in visiting order.
pub fn layer_paths(model: &mut dyn Modules) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    model.visit_mut("", &mut |p, l| {
        out.push((p.to_string(), l.is_conv()));
        Ok(())
    })?;
    Ok(out)
}
