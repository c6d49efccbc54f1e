//! LoRA (Hu et al. 2021) on `Linear` and `Conv2d`, in place: each targeted
//! layer carries an optional [`Lora`] adapter and adds
//! `scale * B(A(x))` to its output, `scale = alpha / rank * multiplier`,
//! as PEFT's `LoraLayer` does (`peft/tuners/lora/layer.py`). There is never a
//! second copy of the model: PSO's reference model is the same network with
//! the shared [`LoraSwitch`] off, which skips every adapter so the output is
//! the base model's bit for bit.
//!
//! ```text
//! let lora = apply_lora(&mut unet, &LoraConfig::new(8, 8.0, LoraTargets::preset(TargetPreset::Attn)))?;
//! let policy = unet.forward(..)?;                                  // adapters on
//! let reference = lora.switch.run_disabled(|| unet.forward(..))?;  // base model
//! optimizer over lora.vars()  // "<module path>.lora_A.weight" / ".lora_B.weight"
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use regex::Regex;

use super::layers::matmul_last;
use super::modules::{LayerMut, Modules};
use super::Conv2d;

struct SwitchState {
    enabled: AtomicBool,
    /// f64 bits of the runtime scale multiplier (`--lora-scale`).
    multiplier: AtomicU64,
}

/// The on/off switch and runtime scale shared by every adapter of a model.
/// Cloning shares it.
#[derive(Clone)]
pub struct LoraSwitch(Arc<SwitchState>);

impl std::fmt::Debug for LoraSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoraSwitch(enabled: {}, multiplier: {})", self.enabled(), self.multiplier())
    }
}

impl Default for LoraSwitch {
    fn default() -> Self {
        Self(Arc::new(SwitchState { enabled: AtomicBool::new(true), multiplier: AtomicU64::new(1f64.to_bits()) }))
    }
}

impl LoraSwitch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn enabled(&self) -> bool {
        self.0.enabled.load(Ordering::SeqCst)
    }

    pub fn set_enabled(&self, on: bool) {
        self.0.enabled.store(on, Ordering::SeqCst)
    }

    /// Multiplies every adapter's `alpha / rank` (diffusers' `lora_scale`).
    pub fn multiplier(&self) -> f64 {
        f64::from_bits(self.0.multiplier.load(Ordering::SeqCst))
    }

    pub fn set_multiplier(&self, m: f64) {
        self.0.multiplier.store(m.to_bits(), Ordering::SeqCst)
    }

    /// Runs `f` with every adapter off (the reference model), then restores
    /// the previous state, whatever `f` returns.
    pub fn run_disabled<R>(&self, f: impl FnOnce() -> R) -> R {
        let was = self.enabled();
        self.set_enabled(false);
        let out = f();
        self.set_enabled(was);
        out
    }
}

/// One adapter. `lora_a`: [r, in] for a Linear, [r, cin, kh, kw] for a
/// Conv2d (a convolution with the base layer's kernel, stride and padding);
/// `lora_b`: [out, r] or [cout, r, 1, 1] (a 1x1 convolution), as PEFT's
/// `lora_A` / `lora_B` modules.
#[derive(Debug, Clone)]
pub struct Lora {
    pub lora_a: Var,
    pub lora_b: Var,
    pub alpha: f64,
    pub switch: LoraSwitch,
    /// Frozen copies of the factors the run started from, used instead of
    /// nothing while the switch is off (see [`Lora::anchor_here`]).
    pub anchor: Option<(Tensor, Tensor)>,
}

impl Lora {
    pub fn new(lora_a: Var, lora_b: Var, alpha: f64, switch: LoraSwitch) -> Result<Self> {
        let (ra, rb) = (lora_a.dim(0)?, lora_b.dim(1)?);
        if ra != rb || ra == 0 || lora_a.rank() != lora_b.rank() {
            candle_core::bail!("lora_A {:?} and lora_B {:?} do not make a rank-r pair", lora_a.dims(), lora_b.dims());
        }
        Ok(Self { lora_a, lora_b, alpha, switch, anchor: None })
    }

    /// Make the adapter's present values part of the frozen model: with the
    /// switch off it then adds `scale * B0(A0(x))` from copies taken now,
    /// not nothing. Why: a run that starts from a LoRA file (`init-from`)
    /// must compare with the model it starts from (pso.md's p_pre), not
    /// with the base without that LoRA (for an LCM-LoRA start, the
    /// non-distilled teacher).
    pub fn anchor_here(&mut self) -> Result<()> {
        self.anchor = Some((self.lora_a.as_tensor().copy()?.detach(), self.lora_b.as_tensor().copy()?.detach()));
        Ok(())
    }

    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `alpha / rank`, PEFT's `scaling`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }

    /// The factor the adapter output is multiplied by right now.
    pub fn effective_scale(&self) -> f64 {
        self.scale() * self.switch.multiplier()
    }

    pub fn is_active(&self) -> bool {
        self.switch.enabled()
    }

    /// The factors the layer adds now, in the activations' dtype `dt`: the
    /// trained ones with the switch on, the anchor (or none) with it off.
    /// Factors of a half-precision model are f32 master weights (see
    /// [`master_dtype`]); the cast is in the graph, so their gradients
    /// arrive in f32.
    fn factors(&self, dt: DType) -> Result<Option<(Tensor, Tensor)>> {
        let (a, b) = if self.is_active() {
            (self.lora_a.as_tensor(), self.lora_b.as_tensor())
        } else {
            match &self.anchor {
                Some((a, b)) => (a, b),
                None => return Ok(None),
            }
        };
        Ok(Some((in_dtype(a, dt)?, in_dtype(b, dt)?)))
    }

    /// `scale * B(A(x))` for a Linear's input `x` [..., in]; None when the
    /// switch is off and there is no anchor (the layer is then the base's
    /// bit for bit).
    pub fn linear_delta(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.factors(x.dtype())? else { return Ok(None) };
        let h = matmul_last(x, &a)?;
        Ok(Some((matmul_last(&h, &b)? * self.effective_scale())?))
    }

    /// `scale * B(A(x))` for a Conv2d's input `x` [B, C, H, W]; None as
    /// [`Self::linear_delta`].
    pub fn conv_delta(&self, x: &Tensor, stride: usize, padding: usize) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.factors(x.dtype())? else { return Ok(None) };
        let h = Conv2d::new(a, None, stride, padding).forward(x)?;
        Ok(Some((Conv2d::new(b, None, 1, 0).forward(&h)? * self.effective_scale())?))
    }

    /// The adapter's tensors, detached, for export.
    pub fn weights(&self, path: &str) -> LoraWeights {
        LoraWeights {
            path: path.to_string(),
            lora_a: self.lora_a.as_tensor().detach(),
            lora_b: self.lora_b.as_tensor().detach(),
            alpha: self.alpha,
        }
    }
}

/// An adapter as stored in a file: which module, its two factors and alpha
/// (the common currency of the LoRA exporters and importers).
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// Dotted module path inside the model, e.g. `mid_block.attentions.0.proj_in`.
    pub path: String,
    pub lora_a: Tensor,
    pub lora_b: Tensor,
    pub alpha: f64,
}

impl LoraWeights {
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `scale * B @ A` shaped like the base weight (`weight_dims`), in f32
    /// (f64 for f64 factors):
    /// what merging adds to the base weight. For a convolution this is
    /// PEFT's `get_delta_weight` (B is 1x1, so the composition of the two
    /// convolutions is one convolution with kernel `B @ A`).
    pub fn delta(&self, weight_dims: &[usize], multiplier: f64) -> Result<Tensor> {
        let dt = master_dtype(self.lora_a.dtype());
        let a = self.lora_a.to_dtype(dt)?.flatten_from(1)?;
        let b = self.lora_b.to_dtype(dt)?.flatten_from(1)?;
        let s = self.alpha / self.rank() as f64 * multiplier;
        (b.matmul(&a)? * s)?.reshape(weight_dims)
    }
}

/// `t` in dtype `dt`: itself when it already is (no op in the graph), else
/// a cast that gradients flow back through.
pub(crate) fn in_dtype(t: &Tensor, dt: DType) -> Result<Tensor> {
    if t.dtype() == dt {
        Ok(t.clone())
    } else {
        t.to_dtype(dt)
    }
}

/// The dtype trained parameters are kept in for a model of dtype `dt`:
/// f32 master weights for f16 / bf16 models (AdamW's eps of 1e-8 rounds to
/// 0 in f16, and half-precision updates of lr * 1e-4 vanish), the model's
/// own otherwise (f64 stays f64). Also the dtype of LoRA files and of
/// merges.
pub fn master_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// PEFT's initialisations of `lora_A` (`init_lora_weights`); `lora_B` is
/// always zero, so a fresh adapter leaves the model unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// `init_lora_weights=True` (PEFT's default): `kaiming_uniform_(a=sqrt(5))`,
    /// i.e. uniform in +-1/sqrt(fan_in).
    #[default]
    Kaiming,
    /// `init_lora_weights="gaussian"`: normal with std 1/rank.
    Gaussian,
}

/// Named target sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPreset {
    /// `to_q`, `to_k`, `to_v`, `to_out.0` of every attention (the PSO paper's).
    Attn,
    /// Attention projections plus the feed-forward `ff.net.0.proj`, `ff.net.2`.
    AttnFf,
    /// Every Linear.
    AllLinear,
    /// Every Linear and Conv2d (resnet convs, shortcuts, conv projections,
    /// samplers, conv_in/conv_out).
    All,
}

impl TargetPreset {
    pub const NAMES: [&'static str; 4] = ["attn", "attn-ff", "all-linear", "all"];

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "attn" => Some(Self::Attn),
            "attn-ff" => Some(Self::AttnFf),
            "all-linear" => Some(Self::AllLinear),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

const ATTN: &str = r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)";
const FF: &str = r".*\.ff\.net\.(0\.proj|2)";

/// Which layers get an adapter (or become trainable): module paths that
/// fully match one of the patterns, restricted to Linear and/or Conv2d.
#[derive(Debug, Clone)]
pub struct LoraTargets {
    /// What the user wrote (a preset name or the patterns), for configs.
    pub spec: String,
    patterns: Vec<Regex>,
    linear: bool,
    conv: bool,
}

impl LoraTargets {
    pub fn preset(p: TargetPreset) -> Self {
        let (pats, conv, name): (&[&str], bool, &str) = match p {
            TargetPreset::Attn => (&[ATTN], false, "attn"),
            TargetPreset::AttnFf => (&[ATTN, FF], false, "attn-ff"),
            TargetPreset::AllLinear => (&[".*"], false, "all-linear"),
            TargetPreset::All => (&[".*"], true, "all"),
        };
        let patterns = pats.iter().filter_map(|s| full_match(s).ok()).collect();
        Self { spec: name.to_string(), patterns, linear: true, conv }
    }

    /// Regular expressions matched against the whole dotted module path
    /// (`.*attn2\.to_k`, `up_blocks\.1\..*`), Linear and Conv2d alike.
    pub fn patterns(patterns: &[&str]) -> crate::Result<Self> {
        let compiled = patterns
            .iter()
            .map(|p| full_match(p).map_err(|e| crate::Error::invalid(format!("bad LoRA target pattern {p:?}: {e}"))))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Self { spec: patterns.join(","), patterns: compiled, linear: true, conv: true })
    }

    /// A preset name (`attn`, `attn-ff`, `all-linear`, `all`) or
    /// comma-separated patterns.
    pub fn parse(spec: &str) -> crate::Result<Self> {
        match TargetPreset::from_name(spec.trim()) {
            Some(p) => Ok(Self::preset(p)),
            None => {
                let pats: Vec<&str> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                if pats.is_empty() {
                    return Err(crate::Error::invalid(format!(
                        "empty LoRA target spec; use a preset ({}) or module-path patterns",
                        TargetPreset::NAMES.join(", ")
                    )));
                }
                Self::patterns(&pats)
            }
        }
    }

    pub fn matches(&self, path: &str, is_conv: bool) -> bool {
        let kind_ok = if is_conv { self.conv } else { self.linear };
        kind_ok && self.patterns.iter().any(|r| r.is_match(path))
    }
}

fn full_match(p: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{p})$"))
}

/// Rank, alpha, targets and initialisation of a new set of adapters.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: LoraTargets,
    pub init: LoraInit,
    /// Seeds the `lora_A` draws (one ChaCha8 stream, layers in module order).
    pub seed: u64,
}

impl LoraConfig {
    pub fn new(rank: usize, alpha: f64, targets: LoraTargets) -> Self {
        Self { rank, alpha, targets, init: LoraInit::default(), seed: 0 }
    }
}

/// The adapters of one model, sharing one switch. The `Var`s are the ones
/// inside the model's layers: training them trains the model.
#[derive(Debug, Clone)]
pub struct LoraSet {
    pub switch: LoraSwitch,
    /// (module path, adapter) in module order.
    pub adapters: Vec<(String, Lora)>,
}

impl LoraSet {
    /// Trainable parameters keyed `<path>.lora_A.weight` / `<path>.lora_B.weight`
    /// (PEFT's state-dict names, without the `unet.` prefix).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(2 * self.adapters.len());
        for (p, l) in &self.adapters {
            out.push((format!("{p}.lora_A.weight"), l.lora_a.clone()));
            out.push((format!("{p}.lora_B.weight"), l.lora_b.clone()));
        }
        out
    }

    pub fn weights(&self) -> Vec<LoraWeights> {
        self.adapters.iter().map(|(p, l)| l.weights(p)).collect()
    }

    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }
}

fn init_a(rng: &mut ChaCha8Rng, init: LoraInit, dims: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let fan_in: usize = dims[1..].iter().product();
    let v: Vec<f64> = match init {
        LoraInit::Kaiming => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        }
        LoraInit::Gaussian => {
            let std = 1.0 / dims[0] as f64;
            (0..n).map(|_| { let z: f64 = StandardNormal.sample(&mut *rng); std * z }).collect()
        }
    };
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)?.to_device(dev)
}

/// Shapes of (lora_A, lora_B) for a layer.
fn factor_dims(layer: &LayerMut<'_>, rank: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    Ok(match layer {
        LayerMut::Linear(l) => {
            let (out, inp) = l.weight.dims2()?;
            (vec![rank, inp], vec![out, rank])
        }
        LayerMut::Conv2d(c) => {
            let (out, cin, kh, kw) = c.weight.dims4()?;
            (vec![rank, cin, kh, kw], vec![out, rank, 1, 1])
        }
    })
}

fn weight_of<'a>(layer: &'a LayerMut<'_>) -> &'a Tensor {
    match layer {
        LayerMut::Linear(l) => &l.weight,
        LayerMut::Conv2d(c) => &c.weight,
    }
}

fn set_lora(layer: &mut LayerMut<'_>, lora: Option<Lora>) -> Option<Lora> {
    match layer {
        LayerMut::Linear(l) => std::mem::replace(&mut l.lora, lora),
        LayerMut::Conv2d(c) => std::mem::replace(&mut c.lora, lora),
    }
}

fn lora_mut<'a>(layer: &'a mut LayerMut<'_>) -> Option<&'a mut Lora> {
    match layer {
        LayerMut::Linear(l) => l.lora.as_mut(),
        LayerMut::Conv2d(c) => c.lora.as_mut(),
    }
}

fn has_lora(layer: &LayerMut<'_>) -> bool {
    match layer {
        LayerMut::Linear(l) => l.lora.is_some(),
        LayerMut::Conv2d(c) => c.lora.is_some(),
    }
}

/// Adds fresh adapters (A initialised, B zero) to every targeted layer.
/// Errors when nothing matches or a targeted layer already has one.
pub fn apply_lora(model: &mut dyn Modules, cfg: &LoraConfig) -> Result<LoraSet> {
    apply_lora_with(model, cfg, &LoraSwitch::new())
}

/// [`apply_lora`] under an existing switch, so that adapters on several
/// models (UNet and text encoders) turn off together.
pub fn apply_lora_with(model: &mut dyn Modules, cfg: &LoraConfig, switch: &LoraSwitch) -> Result<LoraSet> {
    if cfg.rank == 0 {
        candle_core::bail!("LoRA rank must be at least 1");
    }
    let switch = switch.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut adapters = Vec::new();
    model.visit_mut("", &mut |path, mut layer| {
        if !cfg.targets.matches(path, layer.is_conv()) {
            return Ok(());
        }
        if has_lora(&layer) {
            candle_core::bail!("{path} already has a LoRA adapter");
        }
        let w = weight_of(&layer);
        let (dtype, dev) = (master_dtype(w.dtype()), w.device().clone());
        let (da, db) = factor_dims(&layer, cfg.rank)?;
        let a = Var::from_tensor(&init_a(&mut rng, cfg.init, &da, dtype, &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(db, dtype, &dev)?)?;
        let lora = Lora::new(a, b, cfg.alpha, switch.clone())?;
        adapters.push((path.to_string(), lora.clone()));
        set_lora(&mut layer, Some(lora));
        Ok(())
    })?;
    if adapters.is_empty() {
        candle_core::bail!("no layer matches the LoRA targets {:?}", cfg.targets.spec);
    }
    Ok(LoraSet { switch, adapters })
}

/// Attaches adapters read from a file (see [`crate::export`]). Every entry
/// must name a layer of the model with matching shapes; all problems are
/// reported at once. 1x1 kernels convert between Linear and Conv2d shapes
/// (SD 1.x projects with 1x1 convolutions where SD 2.x uses Linears).
pub fn attach_lora(model: &mut dyn Modules, weights: &[LoraWeights], switch: &LoraSwitch) -> Result<LoraSet> {
    let mut by_path: std::collections::HashMap<&str, &LoraWeights> = weights.iter().map(|w| (w.path.as_str(), w)).collect();
    let mut adapters = Vec::new();
    let mut problems = Vec::new();
    model.visit_mut("", &mut |path, mut layer| {
        let Some(w) = by_path.remove(path) else { return Ok(()) };
        if has_lora(&layer) {
            problems.push(format!("{path} already has a LoRA adapter"));
            return Ok(());
        }
        let (da, db) = factor_dims(&layer, w.rank())?;
        let fit = |t: &Tensor, dims: &[usize]| -> Option<Tensor> {
            let squeezed: Vec<usize> = t.dims().iter().copied().filter(|&d| d != 1).collect();
            let want: Vec<usize> = dims.iter().copied().filter(|&d| d != 1).collect();
            (t.dims() == dims || (squeezed == want && t.elem_count() == dims.iter().product::<usize>())).then(|| t.reshape(dims).ok()).flatten()
        };
        let (Some(a), Some(b)) = (fit(&w.lora_a, &da), fit(&w.lora_b, &db)) else {
            problems.push(format!(
                "{path}: lora_A {:?} / lora_B {:?} do not fit the layer (want {da:?} / {db:?})",
                w.lora_a.dims(),
                w.lora_b.dims()
            ));
            return Ok(());
        };
        let base = weight_of(&layer);
        let (dtype, dev) = (master_dtype(base.dtype()), base.device().clone());
        let a = Var::from_tensor(&a.to_dtype(dtype)?.to_device(&dev)?)?;
        let b = Var::from_tensor(&b.to_dtype(dtype)?.to_device(&dev)?)?;
        let lora = Lora::new(a, b, w.alpha, switch.clone())?;
        adapters.push((path.to_string(), lora.clone()));
        set_lora(&mut layer, Some(lora));
        Ok(())
    })?;
    let mut unknown: Vec<&str> = by_path.into_keys().collect();
    unknown.sort();
    if !unknown.is_empty() {
        problems.push(format!("{} modules not in the model: {}", unknown.len(), unknown.join(", ")));
    }
    if !problems.is_empty() {
        candle_core::bail!("LoRA does not fit the model: {}", problems.join("; "));
    }
    Ok(LoraSet { switch: switch.clone(), adapters })
}

/// Folds every adapter into its base weight (`W += scale * multiplier * B @ A`,
/// the multiplier as the switch has it now) and removes the adapters.
/// Returns how many layers were merged.
pub fn merge_lora(model: &mut dyn Modules) -> Result<usize> {
    let mut n = 0;
    model.visit_mut("", &mut |path, mut layer| {
        let Some(lora) = set_lora(&mut layer, None) else { return Ok(()) };
        let w = weight_of(&layer).clone();
        let delta = lora.weights(path).delta(w.dims(), lora.switch.multiplier())?;
        let merged = (w.to_dtype(master_dtype(w.dtype()))? + delta.to_device(w.device())?.to_dtype(master_dtype(w.dtype()))?)?.to_dtype(w.dtype())?;
        match &mut layer {
            LayerMut::Linear(l) => l.weight = merged,
            LayerMut::Conv2d(c) => c.weight = merged,
        }
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// [`Lora::anchor_here`] on every adapter of `model`: with the switch off
/// the model is then the model as it is now, adapters included. Returns
/// how many adapters were anchored.
pub fn anchor_lora(model: &mut dyn Modules) -> Result<usize> {
    let mut n = 0;
    model.visit_mut("", &mut |_, mut layer| {
        if let Some(l) = lora_mut(&mut layer) {
            l.anchor_here()?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Full fine-tuning of chosen parameter groups: the weights (and, with
/// `bias`, the biases) of the targeted layers become `Var`s, keyed by their
/// checkpoint names (`<path>.weight`, `<path>.bias`). Layers not targeted
/// stay frozen tensors.
pub fn make_trainable(model: &mut dyn Modules, targets: &LoraTargets, bias: bool) -> Result<Vec<(String, Var)>> {
    let mut out = Vec::new();
    model.visit_mut("", &mut |path, layer| {
        if !targets.matches(path, layer.is_conv()) {
            return Ok(());
        }
        let (w, b) = match layer {
            LayerMut::Linear(l) => (&mut l.weight, &mut l.bias),
            LayerMut::Conv2d(c) => (&mut c.weight, &mut c.bias),
        };
        // Master weights (f32 for a half-precision model); the layer casts
        // them to the activations' dtype in its forward.
        let v = Var::from_tensor(&w.to_dtype(master_dtype(w.dtype()))?)?;
        *w = v.as_tensor().clone();
        out.push((format!("{path}.weight"), v));
        if let (true, Some(b)) = (bias, b.as_mut()) {
            let v = Var::from_tensor(&b.to_dtype(master_dtype(b.dtype()))?)?;
            *b = v.as_tensor().clone();
            out.push((format!("{path}.bias"), v));
        }
        Ok(())
    })?;
    if out.is_empty() {
        candle_core::bail!("no layer matches the trainable targets {:?}", targets.spec);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "lora_tests.rs"]
pub(crate) mod tests;
