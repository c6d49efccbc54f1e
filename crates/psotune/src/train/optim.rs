//! AdamW with state we can save: candle_nn's `AdamW` keeps its moments
//! private, so a run could not resume bit-exactly. Semantics are those of
//! `torch.optim.AdamW` (torch 2.x `_single_tensor_adam` with
//! `decoupled_weight_decay=True`, no amsgrad), per parameter:
//!
//! ```text
//! step += 1
//! p  *= 1 - lr * weight_decay                    # decoupled weight decay
//! m   = m + (g - m) * (1 - beta1)                # exp_avg.lerp_(g, 1 - beta1)
//! v   = v * beta2 + (1 - beta2) * g * g          # exp_avg_sq
//! p  -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
//! ```
//!
//! State is keyed by parameter name, so it survives rebuilding the model and
//! is saved as safetensors (`<name>.exp_avg`, `<name>.exp_avg_sq`, per-name
//! step counts in the metadata). A parameter without a gradient is skipped
//! entirely (no decay, no step count), as PyTorch skips `p.grad is None`.
//! Moments have the parameter's dtype, as in PyTorch, except for half
//! precision (f16, bf16): those moments are kept in f32 and the update is
//! computed in f32, then rounded into the parameter. Why: in f16, g * g and
//! eps = 1e-8 underflow to 0, so v = 0 and the first update is 0 / 0 = NaN
//! (or m / 0 = inf).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw_kernel;
use super::grads::Grads;
use super::tensors_io::{read_tensors_with_metadata, write_tensors_with_metadata};
use crate::error::{Error, Result};

/// Hyper-parameters; the defaults are `torch.optim.AdamW`'s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

#[derive(Debug, Clone)]
struct ParamState {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// The metadata of an optimizer file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerMeta {
    format: String,
    format_version: u32,
    /// Updates per parameter (torch's per-parameter `state['step']`).
    steps: BTreeMap<String, u64>,
    /// The hyper-parameters in use when saved (for information).
    config: AdamWConfig,
}

/// File tag in the optimizer safetensors metadata.
const FORMAT: &str = "psotune.adamw";
const FORMAT_VERSION: u32 = 1;

pub struct AdamW {
    config: AdamWConfig,
    lr: f64,
    params: Vec<(String, Var)>,
    /// Name -> index into `params`.
    index: HashMap<String, usize>,
    state: BTreeMap<String, ParamState>,
}

impl AdamW {
    /// Optimize `params` (names must be unique), e.g.
    /// [`crate::nn::Weights::vars`] or a LoRA adapter list.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, (name, _)) in params.iter().enumerate() {
            if index.insert(name.clone(), i).is_some() {
                return Err(Error::invalid(format!("AdamW: parameter {name} is listed twice")));
            }
        }
        Ok(AdamW { lr: config.lr, config, params, index, state: BTreeMap::new() })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The learning rate the next [`AdamW::step`] uses (a schedule sets it).
    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// How many updates the parameter `name` has had (torch's `state['step']`).
    pub fn param_step(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// One update of every parameter that has a gradient in `grads`.
    /// Gradients for names that are not parameters, or of the wrong shape,
    /// are an error found before any parameter changes (a typo in a name
    /// would otherwise silently train nothing).
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        for (name, g) in grads.iter() {
            let Some(&i) = self.index.get(name) else {
                return Err(Error::invalid(format!("AdamW: gradient for {name}, which is not a parameter")));
            };
            let p = self.params[i].1.dims();
            if g.dims() != p {
                return Err(Error::invalid(format!("AdamW: gradient of {name} has shape {:?}, parameter {p:?}", g.dims())));
            }
        }
        let lr = self.lr;
        for (name, var) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            let p = var.as_tensor();
            let sd = state_dtype(p.dtype());
            let g = g.to_dtype(sd)?;
            let st = match self.state.get(name) {
                Some(st) => st.clone(),
                None => ParamState { step: 0, exp_avg: Tensor::zeros(p.shape(), sd, p.device())?, exp_avg_sq: Tensor::zeros(p.shape(), sd, p.device())? },
            };
            let step = st.step + 1;
            let h = Hyper::new(lr, self.config, step);
            let (exp_avg, exp_avg_sq) = if sd == p.dtype() && adamw_kernel::applies(p, &g, &st.exp_avg, &st.exp_avg_sq) {
                adamw_kernel::update(p, &g, &st.exp_avg, &st.exp_avg_sq, &h)?;
                (st.exp_avg, st.exp_avg_sq)
            } else {
                let (p_new, m, v) = update_composed(&p.to_dtype(sd)?, &g, &st, &h)?;
                var.set(&p_new.to_dtype(p.dtype())?)?;
                (m, v)
            };
            self.state.insert(name.clone(), ParamState { step, exp_avg, exp_avg_sq });
        }
        Ok(())
    }

    /// The moments as named tensors: `<name>.exp_avg`, `<name>.exp_avg_sq`.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, st) in &self.state {
            out.insert(format!("{name}.exp_avg"), st.exp_avg.clone());
            out.insert(format!("{name}.exp_avg_sq"), st.exp_avg_sq.clone());
        }
        out
    }

    /// Write the moments and per-parameter step counts (plus the
    /// hyper-parameters, for information) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = OptimizerMeta {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            steps: self.state.iter().map(|(k, s)| (k.clone(), s.step)).collect(),
            config: self.config,
        };
        let meta = serde_json::to_value(&meta).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
        write_tensors_with_metadata(&self.state_tensors(), Some(&meta), path)
    }

    /// Replace the state with the one saved in `path`. Strict: every saved
    /// moment must name a parameter of this optimizer with its shape and
    /// dtype; parameters absent from the file start fresh (they had no
    /// gradient yet). The hyper-parameters stay those of this optimizer.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
        let (mut tensors, meta) = read_tensors_with_metadata(path)?;
        let meta = meta.ok_or_else(|| bad("no psotune metadata: not an AdamW state".into()))?;
        let meta: OptimizerMeta = serde_json::from_value(meta).map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.format != FORMAT {
            return Err(bad(format!("not an AdamW state (format {:?})", meta.format)));
        }
        if meta.format_version != FORMAT_VERSION {
            return Err(bad(format!("AdamW state format_version {}, this psotune reads {FORMAT_VERSION}", meta.format_version)));
        }
        let mut state = BTreeMap::new();
        for (name, step) in meta.steps {
            let Some((_, var)) = self.index.get(&name).map(|&i| &self.params[i]) else {
                return Err(bad(format!("state for {name}, which is not a parameter of this run")));
            };
            let mut take = |suffix: &str| {
                let key = format!("{name}.{suffix}");
                let t = tensors.remove(&key).ok_or_else(|| bad(format!("missing tensor {key}")))?;
                let sd = state_dtype(var.dtype());
                if t.dims() != var.dims() || t.dtype() != sd {
                    let (got, want) = ((t.dims().to_vec(), t.dtype()), (var.dims().to_vec(), sd));
                    return Err(bad(format!("{key} is {got:?}, parameter is {want:?}")));
                }
                Ok(t.to_device(var.device())?)
            };
            let exp_avg = take("exp_avg")?;
            let exp_avg_sq = take("exp_avg_sq")?;
            state.insert(name, ParamState { step, exp_avg, exp_avg_sq });
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(bad(format!("unexpected tensor {extra} (no step count for it)")));
        }
        self.state = state;
        Ok(())
    }
}

/// The scalars of one update of one parameter.
pub(crate) struct Hyper {
    /// 1 - lr weight_decay (1 when there is no decay).
    pub decay: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// lr / (1 - beta1^step).
    pub step_size: f64,
    /// sqrt(1 - beta2^step).
    pub bias_correction2_sqrt: f64,
}

impl Hyper {
    fn new(lr: f64, c: AdamWConfig, step: u64) -> Self {
        // Bias corrections in f64 as torch does with its Python-float step.
        let bias_correction1 = 1.0 - c.beta1.powf(step as f64);
        Hyper {
            decay: 1.0 - lr * c.weight_decay,
            weight_decay: c.weight_decay,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step_size: lr / bias_correction1,
            bias_correction2_sqrt: (1.0 - c.beta2.powf(step as f64)).sqrt(),
        }
    }
}

/// The dtype AdamW keeps a parameter's moments in: f32 for half
/// precision, the parameter's own otherwise.
pub fn state_dtype(param: candle_core::DType) -> candle_core::DType {
    match param {
        candle_core::DType::F16 | candle_core::DType::BF16 => candle_core::DType::F32,
        d => d,
    }
}

/// The update from tensor ops (other dtypes and devices): the new
/// parameter (from `p`, in the moments' dtype) and the new moments.
/// `adamw_kernel` computes the same expressions in the same order, in place.
fn update_composed(p: &Tensor, g: &Tensor, st: &ParamState, h: &Hyper) -> Result<(Tensor, Tensor, Tensor)> {
    // Decay first, from the parameter before this step's update.
    let mut p_new = if h.weight_decay != 0.0 { p.affine(h.decay, 0.0)? } else { p.clone() };
    // torch's lerp with weight < 0.5: m + w * (g - m).
    let exp_avg = (&st.exp_avg + (g - &st.exp_avg)?.affine(1.0 - h.beta1, 0.0)?)?;
    let exp_avg_sq = (st.exp_avg_sq.affine(h.beta2, 0.0)? + g.sqr()?.affine(1.0 - h.beta2, 0.0)?)?;
    // Divide (not multiply by the reciprocal) as torch does.
    let bc2 = Tensor::new(h.bias_correction2_sqrt, p.device())?.to_dtype(p.dtype())?;
    let denom = exp_avg_sq.sqrt()?.broadcast_div(&bc2)?.affine(1.0, h.eps)?;
    p_new = (p_new - (exp_avg.div(&denom)?.affine(h.step_size, 0.0))?)?;
    Ok((p_new, exp_avg, exp_avg_sq))
}

#[cfg(test)]
mod kernel_tests {
    use candle_core::{DType, Tensor, Var};

    use super::{adamw_kernel, update_composed, AdamWConfig, Hyper, ParamState};
    use crate::ops::gradcheck::det_tensor;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// The in-place kernel and the tensor-op update give the same bits over
    /// several steps, with and without weight decay, including gradients of
    /// mixed sign and zeros.
    #[test]
    fn in_place_kernel_is_bit_identical_to_tensor_ops() {
        for path in crate::ops::cpu::simd::Path::supported() {
            crate::ops::cpu::simd::with_path(path, || kernel_equals_tensor_ops(&path.to_string())).unwrap();
        }
    }

    fn kernel_equals_tensor_ops(path: &str) {
        for wd in [0.0, 0.05] {
            let cfg = AdamWConfig { lr: 3e-3, beta1: 0.85, beta2: 0.99, eps: 1e-6, weight_decay: wd };
            let init = det_tensor(&[37, 5], 1).to_dtype(DType::F32).unwrap();
            let var = Var::from_tensor(&init).unwrap();
            let p = init.copy().unwrap();
            let mut st = ParamState { step: 0, exp_avg: p.zeros_like().unwrap(), exp_avg_sq: p.zeros_like().unwrap() };
            let (m, v) = (p.zeros_like().unwrap(), p.zeros_like().unwrap());
            for step in 1..=4u64 {
                let g = (det_tensor(&[37, 5], 10 + step).to_dtype(DType::F32).unwrap() * (step as f64)).unwrap().relu().unwrap();
                let h = Hyper::new(cfg.lr * step as f64, cfg, step);
                assert!(adamw_kernel::applies(&p, &g, &m, &v));
                adamw_kernel::update(&p, &g, &m, &v, &h).unwrap();
                let (pn, ea, es) = update_composed(var.as_tensor(), &g, &st, &h).unwrap();
                var.set(&pn).unwrap();
                st = ParamState { step, exp_avg: ea, exp_avg_sq: es };
                assert_eq!(bits(&p), bits(var.as_tensor()), "{path}: parameter, wd {wd}, step {step}");
                assert_eq!(bits(&m), bits(&st.exp_avg), "{path}: exp_avg, step {step}");
                assert_eq!(bits(&v), bits(&st.exp_avg_sq), "{path}: exp_avg_sq, step {step}");
            }
        }
    }

    /// Regression (review defect 5): a half-precision parameter keeps f32
    /// moments and steps like its f32 twin (rounded), where f16 moments
    /// gave NaN (g * g and eps underflow to 0, so 0 / 0).
    #[test]
    fn half_precision_parameters_keep_f32_moments_and_stay_finite() {
        use super::{AdamW, Grads};
        let init = (det_tensor(&[8, 3], 2).to_dtype(DType::F32).unwrap() * 0.1).unwrap();
        // Gradients around 1e-5 and exact zeros: g * g underflows in f16.
        let grad = (det_tensor(&[8, 3], 3).to_dtype(DType::F32).unwrap() * 1e-5).unwrap();
        let cfg = AdamWConfig { lr: 1e-3, ..Default::default() };
        let mut results = Vec::new();
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let var = Var::from_tensor(&init.to_dtype(dt).unwrap()).unwrap();
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
            for _ in 0..3 {
                let mut g = Grads::default();
                g.insert("w", grad.to_dtype(dt).unwrap());
                opt.step(&g).unwrap();
            }
            assert_eq!(var.dtype(), dt);
            let st = opt.state_tensors();
            assert!(st.values().all(|t| t.dtype() == super::state_dtype(dt)), "{dt:?}");
            let v: Vec<f32> = var.as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{dt:?}: {v:?}");
            results.push(v);
        }
        for (k, tol) in [(1, 2e-3f32), (2, 5e-2)] {
            let worst = results[0].iter().zip(&results[k]).map(|(a, b)| (a - b).abs() / a.abs().max(1e-2)).fold(0f32, f32::max);
            assert!(worst < tol, "half precision {k}: relative difference {worst}");
        }
    }
}
