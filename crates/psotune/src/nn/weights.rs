//! Strict weight loading. Models are built through a candle `VarBuilder`
//! whose backend records every key the model asks for. A missing or
//! mis-shaped key does not stop the build (a zero tensor of the expected shape
//! stands in) so that one pass collects *every* problem; `finish` then turns
//! them, plus any tensor the model never asked for, into one error naming all
//! offending keys. (nanoGPT's `from_pretrained` asserts keys and shapes; candle's
//! SD code silently ignores unused weights, which is what we avoid.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::{Error, Result, WeightReport};

#[derive(Default)]
struct Record {
    used: BTreeSet<String>,
    missing: BTreeSet<String>,
    mismatched: BTreeMap<String, (Vec<usize>, Vec<usize>)>,
    vars: Vec<(String, Var)>,
}

struct Inner {
    tensors: HashMap<String, Tensor>,
    record: Mutex<Record>,
    /// When set, every tensor handed out is wrapped in a `Var` (full
    /// fine-tuning, gradient checks) and remembered under its key.
    make_vars: bool,
    source: PathBuf,
}

/// A set of named tensors that models are built from, strictly.
#[derive(Clone)]
pub struct Weights {
    inner: Arc<Inner>,
    dtype: DType,
    device: Device,
}

struct Backend(Arc<Inner>);

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut rec = self.0.record.lock().expect("weight record poisoned");
        let Some(t) = self.0.tensors.get(name) else {
            rec.missing.insert(name.to_string());
            return Tensor::zeros(s, dtype, dev);
        };
        if t.dims() != s.dims() {
            rec.mismatched.insert(name.to_string(), (t.dims().to_vec(), s.dims().to_vec()));
            return Tensor::zeros(s, dtype, dev);
        }
        rec.used.insert(name.to_string());
        let t = t.to_device(dev)?.to_dtype(dtype)?;
        if self.0.make_vars {
            let v = Var::from_tensor(&t)?;
            let out = v.as_tensor().clone();
            rec.vars.push((name.to_string(), v));
            return Ok(out);
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut rec = self.0.record.lock().expect("weight record poisoned");
        match self.0.tensors.get(name) {
            Some(t) => {
                rec.used.insert(name.to_string());
                t.to_device(dev)?.to_dtype(dtype)
            }
            None => {
                rec.missing.insert(name.to_string());
                candle_core::bail!("missing tensor {name}")
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

impl Weights {
    /// Wrap tensors already in memory (tests, converted checkpoints).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: impl Into<PathBuf>, dtype: DType, device: &Device) -> Self {
        let inner = Inner { tensors, record: Mutex::default(), make_vars: false, source: source.into() };
        Weights { inner: Arc::new(inner), dtype, device: device.clone() }
    }

    /// Read one or more safetensors files (sharded checkpoints give several).
    pub fn from_files(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let tensors = read_all(paths)?;
        Ok(Self::from_tensors(tensors, paths.first().cloned().unwrap_or_default(), dtype, device))
    }

    /// [`Self::from_files`] with every float tensor rounded to `through`
    /// first and handed out in `dtype`: bf16 weights computed with in f32
    /// on a device that has no bf16 kernels.
    pub fn from_files_rounded(paths: &[PathBuf], through: DType, dtype: DType, device: &Device) -> Result<Self> {
        let mut tensors = read_all(paths)?;
        for t in tensors.values_mut().filter(|t| t.dtype().is_float()) {
            *t = t.to_dtype(through)?.to_dtype(dtype)?;
        }
        Ok(Self::from_tensors(tensors, paths.first().cloned().unwrap_or_default(), dtype, device))
    }

    /// Hand out every tensor as a trainable `Var` (see [`Weights::vars`]).
    pub fn trainable(self) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|arc| Inner {
            tensors: arc.tensors.clone(),
            record: Mutex::default(),
            make_vars: arc.make_vars,
            source: arc.source.clone(),
        });
        let inner = Inner { make_vars: true, ..inner };
        Weights { inner: Arc::new(inner), dtype: self.dtype, device: self.device }
    }

    /// The builder models are constructed from.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let backend: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(Backend(self.inner.clone()));
        VarBuilder::from_backend(backend, self.dtype, self.device.clone())
    }

    pub fn source(&self) -> &Path {
        &self.inner.source
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.inner.tensors.get(name)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.inner.tensors.keys()
    }

    /// The `Var`s handed out so far, keyed by checkpoint name (only when
    /// built with [`Weights::trainable`]).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.inner.record.lock().expect("weight record poisoned").vars.clone()
    }

    /// What went wrong so far: missing, mis-shaped, and every tensor in the
    /// file that nothing asked for.
    pub fn report(&self) -> WeightReport {
        let rec = self.inner.record.lock().expect("weight record poisoned");
        let mut unused: Vec<String> =
            self.inner.tensors.keys().filter(|k| !rec.used.contains(*k) && !rec.mismatched.contains_key(*k)).cloned().collect();
        unused.sort();
        WeightReport {
            missing: rec.missing.iter().cloned().collect(),
            unused,
            mismatched: rec.mismatched.iter().map(|(k, (a, b))| (k.clone(), a.clone(), b.clone())).collect(),
        }
    }

    /// Call after the model is built: an error naming every offending key, if any.
    pub fn finish(&self) -> Result<()> {
        let report = self.report();
        if report.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights { path: self.inner.source.clone(), report })
        }
    }
}

/// The tensors of all `paths` (a sharded checkpoint's files) in one map.
fn read_all(paths: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for p in paths {
        tensors.extend(read_safetensors(p)?);
    }
    Ok(tensors)
}

/// Load all tensors of a safetensors file on the CPU, keeping their dtype.
///
/// The file is memory-mapped and each tensor copied out of the map, whose
/// pages are released right after: only the tensors stay resident. Reading
/// the whole file into a buffer first held file and tensors at once (6.6 GB
/// after loading SD 2.1's 3.5 GB UNet); the map's own pages count towards
/// the process's resident size too until they are dropped.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: a read-only private mapping used only inside this call; as
    // with every mmap-based safetensors reader, a file truncated by another
    // process while it is read would fault.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Safetensors { path: path.to_path_buf(), msg };
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
    let mut views = st.tensors();
    // File order, so the pages released behind each tensor are not needed again.
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut out = HashMap::new();
    for (name, view) in views {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::U8 => DType::U8,
            safetensors::Dtype::U32 => DType::U32,
            other => return Err(bad(format!("tensor {name} has unsupported dtype {other:?}"))),
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        release(&map, view.data());
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// Drops the mapped pages of `data` (a slice of `map`) from this process's
/// resident set; the page cache keeps them, a later read faults them back.
fn release(map: &memmap2::Mmap, data: &[u8]) {
    let offset = data.as_ptr() as usize - map.as_ptr() as usize;
    // SAFETY: MADV_DONTNEED on a read-only file mapping discards nothing
    // that cannot be re-read from the file. Failure only keeps pages
    // resident, so it is ignored.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len()) };
}

/// Write tensors to a safetensors file (written to a temporary name, then renamed).
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_report_names_every_offending_key() {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert("a.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &dev).unwrap());
        m.insert("b.weight".to_string(), Tensor::zeros((4,), DType::F32, &dev).unwrap());
        m.insert("extra".to_string(), Tensor::zeros((1,), DType::F32, &dev).unwrap());
        let w = Weights::from_tensors(m, "x.safetensors", DType::F32, &dev);
        let vb = w.var_builder();
        vb.get((2, 3), "a.weight").unwrap();
        vb.get((5,), "b.weight").unwrap();
        vb.get((1,), "c.weight").unwrap();
        let r = w.report();
        assert_eq!(r.missing, vec!["c.weight"]);
        assert_eq!(r.unused, vec!["extra"]);
        assert_eq!(r.mismatched, vec![("b.weight".to_string(), vec![4], vec![5])]);
        let msg = w.finish().unwrap_err().to_string();
        assert!(msg.contains("c.weight") && msg.contains("extra") && msg.contains("b.weight"), "{msg}");
    }

    #[test]
    fn clean_load_passes_and_converts_dtype() {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert("w".to_string(), Tensor::ones((2,), DType::F16, &dev).unwrap());
        let w = Weights::from_tensors(m, "x", DType::F32, &dev);
        let t = w.var_builder().get(2, "w").unwrap();
        assert_eq!(t.dtype(), DType::F32);
        w.finish().unwrap();
    }
}
