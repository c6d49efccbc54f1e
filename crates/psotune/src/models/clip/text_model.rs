//! transformers `CLIPTextModel` / `CLIPTextModelWithProjection`
//! (models/clip/modeling_clip.py, transformers 5.24), inference and training
//! alike: every op is a candle primitive with a backward or one of
//! `crate::ops`.
//!
//! Checkpoint layouts: transformers 4 saved both classes under
//! `text_model.`; transformers 5 saves `CLIPTextModel` at the root
//! (`embeddings.…`) and still uses `text_model.` for the projection class.
//! `load` accepts both, as transformers' loader does.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{ClipActivation, ClipTextConfig};
use crate::nn::{LayerNorm, Linear};
use crate::ops;

/// `torch.nn.Embedding`: a row lookup through `index_select`, whose backward
/// accumulates into the table (repeated ids add up).
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn load(vb: VarBuilder, num: usize, dim: usize) -> Result<Self> {
        Ok(Self { weight: vb.get((num, dim), "weight")? })
    }

    /// ids: any shape of u32/i64 -> that shape + [dim].
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.weight.dim(1)?);
        self.weight.index_select(&ids.flatten_all()?, 0)?.reshape(shape)
    }
}

/// `CLIPTextEmbeddings`: token embedding plus learned absolute positions.
#[derive(Debug, Clone)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        // `position_ids` is a non-persistent buffer (always arange) in
        // transformers >= 4.31, but older checkpoints saved it (some SD1.x
        // fine-tunes even with rounding damage). transformers ignores the
        // stored values; we consume the key so strict loading accepts the
        // file, and ignore the values too. Read untyped so that it never
        // becomes a trainable `Var`.
        if vb.contains_tensor("position_ids") {
            vb.get_unchecked_dtype("position_ids", DType::I64)?;
        }
        Ok(Self {
            token_embedding: Embedding::load(vb.pp("token_embedding"), cfg.vocab_size, cfg.hidden_size)?,
            position_embedding: Embedding::load(vb.pp("position_embedding"), cfg.max_position_embeddings, cfg.hidden_size)?,
        })
    }

    /// ids [B, L] (already validated) -> [B, L, hidden].
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let positions = self.position_embedding.weight.narrow(0, 0, len)?;
        self.token_embedding.forward(ids)?.broadcast_add(&positions)
    }
}

/// `CLIPAttention`: multi-head self-attention, causal in the text tower,
/// unmasked in the vision tower.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl ClipAttention {
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), d, d, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// x [B, L, D]; `mask` [L, L] is added to the scores (0 or -inf): the
    /// text tower's causal mask, `None` for the vision tower.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        let heads = |t: Tensor| t.reshape((b, l, h, hd))?.transpose(1, 2)?.contiguous()?.reshape((b * h, l, hd));
        let q = heads(self.q_proj.forward(x)?)?;
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
            None => scores,
        };
        // Like transformers' eager path, the softmax runs in f32 for half
        // precision (ops::softmax_last_dim upcasts).
        let probs = ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.reshape((b, h, l, hd))?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
    }
}

/// `CLIPMLP`: fc1, activation, fc2.
#[derive(Debug, Clone)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: ClipActivation,
}

impl ClipMlp {
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(vb.pp("fc1"), cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Linear::load(vb.pp("fc2"), cfg.intermediate_size, cfg.hidden_size, true)?,
            activation: cfg.hidden_act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.activation {
            ClipActivation::QuickGelu => ops::quick_gelu(&h)?,
            ClipActivation::Gelu => ops::gelu_erf(&h)?,
            // candle's `gelu` is the tanh form and has a backward.
            ClipActivation::GeluTanh => h.gelu()?,
        };
        self.fc2.forward(&h)
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: ClipAttention::load(vb.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(vb.pp("layer_norm1"), d, eps)?,
            mlp: ClipMlp::load(vb.pp("mlp"), cfg)?,
            layer_norm2: LayerNorm::load(vb.pp("layer_norm2"), d, eps)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?, mask)?)?;
        &x + self.mlp.forward(&self.layer_norm2.forward(&x)?)?
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..cfg.num_hidden_layers).map(|i| ClipEncoderLayer::load(vb.pp(i), cfg)).collect::<Result<_>>()?;
        Ok(Self { layers })
    }
}

/// The text tower (`text_model`): transformers 5's `CLIPTextModel` body
/// (transformers 4 called it `CLIPTextTransformer`).
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            embeddings: ClipTextEmbeddings::load(vb.pp("embeddings"), cfg)?,
            encoder: ClipEncoder::load(vb.pp("encoder"), cfg)?,
            final_layer_norm: LayerNorm::load(vb.pp("final_layer_norm"), cfg.hidden_size, cfg.layer_norm_eps)?,
        })
    }
}

/// What the text encoder gives the diffusion pipelines.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// [B, L, D]: the last layer's output after `final_layer_norm`.
    pub last_hidden_state: Tensor,
    /// [B, L, D]: `hidden_states[-2]`, the second-to-last layer's output
    /// (before `final_layer_norm`), which SDXL conditions on. With one layer
    /// it is the embeddings' output, as in transformers.
    pub penultimate: Tensor,
    /// [B, D] `pooler_output` (the final-normed state at the EOS position) for
    /// `CLIPTextModel`; [B, projection_dim] `text_embeds` =
    /// `text_projection(pooler_output)` for `CLIPTextModelWithProjection`.
    pub pooled: Tensor,
}

/// `CLIPTextModel` (`text_projection: None`) or `CLIPTextModelWithProjection`.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    pub text_model: ClipTextTransformer,
    /// Bias-free projection of the pooled state (SDXL's `text_encoder_2`).
    pub text_projection: Option<Linear>,
    pub config: ClipTextConfig,
}

impl ClipTextModel {
    /// Build from a checkpoint's `VarBuilder` (see the module note on the
    /// two key layouts). `with_projection` selects
    /// `CLIPTextModelWithProjection`; [`ClipTextConfig::has_projection`]
    /// reads it from the config's `architectures`.
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        let root_layout = !with_projection
            && !vb.contains_tensor("text_model.embeddings.token_embedding.weight")
            && vb.contains_tensor("embeddings.token_embedding.weight");
        let text_model = ClipTextTransformer::load(if root_layout { vb.clone() } else { vb.pp("text_model") }, cfg)?;
        let text_projection = if with_projection {
            let Some(p) = cfg.projection_dim else {
                candle_core::bail!("CLIPTextModelWithProjection needs projection_dim in its config")
            };
            Some(Linear::load(vb.pp("text_projection"), cfg.hidden_size, p, false)?)
        } else {
            None
        };
        Ok(Self { text_model, text_projection, config: cfg.clone() })
    }

    /// input_ids [B, L] (u32 or i64, L <= max_position_embeddings).
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let (ids, host_ids) = self.checked_ids(input_ids)?;
        let (penultimate, last) = self.run(&ids, false)?;
        let Some(last) = last else { candle_core::bail!("internal: the last layer did not run") };
        let last_hidden_state = self.text_model.final_layer_norm.forward(&last)?;
        let pooled = self.pool(&last_hidden_state, &host_ids)?;
        let pooled = match &self.text_projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipTextOutput { last_hidden_state, penultimate, pooled })
    }

    /// Only `hidden_states[-2]` (see [`ClipTextOutput::penultimate`]),
    /// skipping the last layer's compute.
    pub fn penultimate(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (ids, _) = self.checked_ids(input_ids)?;
        Ok(self.run(&ids, true)?.0)
    }

    /// Embeddings, then the layers; returns (output of all but the last
    /// layer, output of the last layer unless `stop_early`).
    fn run(&self, ids: &Tensor, stop_early: bool) -> Result<(Tensor, Option<Tensor>)> {
        let mut h = self.text_model.embeddings.forward(ids)?;
        let mask = causal_mask(ids.dim(1)?, h.device())?;
        let layers = &self.text_model.encoder.layers;
        let n = layers.len();
        for layer in &layers[..n.saturating_sub(1)] {
            h = layer.forward(&h, Some(&mask))?;
        }
        if stop_early {
            return Ok((h, None));
        }
        let last = match layers.last() {
            Some(layer) => layer.forward(&h, Some(&mask))?,
            None => h.clone(),
        };
        Ok((h, Some(last)))
    }

    /// Validates shape and id range (an id past the table would otherwise
    /// fail deep inside `index_select`); returns the ids as u32 on the model's
    /// device and a host copy for pooling.
    fn checked_ids(&self, input_ids: &Tensor) -> Result<(Tensor, Vec<Vec<i64>>)> {
        let (b, l) = input_ids.dims2()?;
        let max = self.config.max_position_embeddings;
        if l > max {
            candle_core::bail!("sequence length {l} exceeds max_position_embeddings {max}");
        }
        if b == 0 || l == 0 {
            candle_core::bail!("input_ids must be non-empty, got shape [{b}, {l}]");
        }
        let host: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = host.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let device = self.text_model.embeddings.token_embedding.weight.device();
        Ok((input_ids.to_dtype(DType::U32)?.to_device(device)?, host))
    }

    /// transformers' pooling rule: configs older than PR #24773 carry
    /// `eos_token_id == 2` and pool at the largest id (the EOS, 49407, in the
    /// real vocabulary); others pool at the first position equal to
    /// `eos_token_id` (position 0 if there is none, as `argmax` of all
    /// zeros gives). Ties in the argmax go to the first position, as in torch.
    fn pool(&self, last_hidden_state: &Tensor, ids: &[Vec<i64>]) -> Result<Tensor> {
        let (b, l, _) = last_hidden_state.dims3()?;
        let eos = i64::from(self.config.eos_token_id);
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let pos = if eos == 2 {
                    // first index of the maximum
                    row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
                } else {
                    row.iter().position(|&v| v == eos).unwrap_or(0)
                };
                (i * l + pos) as u32
            })
            .collect();
        let rows = Tensor::from_vec(rows, b, last_hidden_state.device())?;
        last_hidden_state.reshape((b * l, ()))?.index_select(&rows, 0)
    }
}

/// [L, L]: 0 on and below the diagonal, -inf above (a token sees only itself
/// and earlier tokens). The diagonal keeps every row's max finite, so the
/// softmax never divides by zero.
pub(crate) fn causal_mask(len: usize, device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..len).flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(v, (len, len), device)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;
    use crate::nn::Weights;
    use crate::ops::gradcheck::{check, det_tensor, project};

    fn tiny_config(act: ClipActivation) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 11,
            hidden_size: 4,
            intermediate_size: 6,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 5,
            hidden_act: act,
            layer_norm_eps: 1e-5,
            projection_dim: Some(3),
            eos_token_id: 10,
            pad_token_id: Some(1),
            bos_token_id: Some(9),
            architectures: None,
        }
    }

    /// Every tensor a model of `cfg` needs, deterministic, under `prefix`.
    fn tiny_weights(cfg: &ClipTextConfig, prefix: &str, projection: bool) -> HashMap<String, Tensor> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.token_embedding.weight".into(), vec![cfg.vocab_size, d]),
            ("embeddings.position_embedding.weight".into(), vec![cfg.max_position_embeddings, d]),
            ("final_layer_norm.weight".into(), vec![d]),
            ("final_layer_norm.bias".into(), vec![d]),
        ];
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layers.{i}.");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                shapes.push((format!("{p}self_attn.{proj}.weight"), vec![d, d]));
                shapes.push((format!("{p}self_attn.{proj}.bias"), vec![d]));
            }
            for ln in ["layer_norm1", "layer_norm2"] {
                shapes.push((format!("{p}{ln}.weight"), vec![d]));
                shapes.push((format!("{p}{ln}.bias"), vec![d]));
            }
            shapes.push((format!("{p}mlp.fc1.weight"), vec![f, d]));
            shapes.push((format!("{p}mlp.fc1.bias"), vec![f]));
            shapes.push((format!("{p}mlp.fc2.weight"), vec![d, f]));
            shapes.push((format!("{p}mlp.fc2.bias"), vec![d]));
        }
        let mut m: HashMap<String, Tensor> =
            shapes.into_iter().enumerate().map(|(i, (k, s))| (format!("{prefix}{k}"), det_tensor(&s, 100 + i as u64))).collect();
        if projection {
            m.insert("text_projection.weight".into(), det_tensor(&[3, d], 7));
        }
        m
    }

    fn ids(rows: &[[u32; 5]]) -> Tensor {
        Tensor::from_vec(rows.concat(), (rows.len(), 5), &Device::Cpu).unwrap()
    }

    #[test]
    fn both_key_layouts_load_strictly_and_agree() {
        let cfg = tiny_config(ClipActivation::QuickGelu);
        let dev = Device::Cpu;
        let x = ids(&[[9, 3, 4, 10, 10], [9, 5, 10, 1, 1]]);
        let mut outs = Vec::new();
        for prefix in ["text_model.", ""] {
            let w = Weights::from_tensors(tiny_weights(&cfg, prefix, false), "t", DType::F64, &dev);
            let m = ClipTextModel::load(w.var_builder(), &cfg, false).unwrap();
            w.finish().unwrap();
            outs.push(m.forward(&x).unwrap().last_hidden_state);
        }
        let diff = (&outs[0] - &outs[1]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(diff, 0.0);
    }

    /// Old checkpoints carry `text_model.embeddings.position_ids`; strict
    /// loading must accept it and never hand it out as a trainable Var.
    #[test]
    fn stored_position_ids_are_consumed_not_trained() {
        let cfg = tiny_config(ClipActivation::Gelu);
        let dev = Device::Cpu;
        let mut m = tiny_weights(&cfg, "text_model.", true);
        let pos = Tensor::from_vec(vec![0i64, 1, 2, 3, 4], (1, 5), &dev).unwrap();
        m.insert("text_model.embeddings.position_ids".into(), pos);
        let w = Weights::from_tensors(m, "t", DType::F64, &dev).trainable();
        let model = ClipTextModel::load(w.var_builder(), &cfg, true).unwrap();
        w.finish().unwrap();
        assert!(w.vars().iter().all(|(k, _)| !k.contains("position_ids")));
        let out = model.forward(&ids(&[[9, 3, 10, 10, 10]])).unwrap();
        assert_eq!(out.pooled.dims(), &[1, 3]);
    }

    #[test]
    fn missing_projection_is_reported() {
        let cfg = tiny_config(ClipActivation::Gelu);
        let w = Weights::from_tensors(tiny_weights(&cfg, "text_model.", false), "t", DType::F64, &Device::Cpu);
        ClipTextModel::load(w.var_builder(), &cfg, true).unwrap();
        let msg = w.finish().unwrap_err().to_string();
        assert!(msg.contains("text_projection.weight"), "{msg}");
    }

    /// A token must not see later tokens: changing the last id leaves every
    /// earlier position's output unchanged.
    #[test]
    fn attention_is_causal() {
        let cfg = tiny_config(ClipActivation::Gelu);
        let w = Weights::from_tensors(tiny_weights(&cfg, "", false), "t", DType::F64, &Device::Cpu);
        let m = ClipTextModel::load(w.var_builder(), &cfg, false).unwrap();
        let a = m.forward(&ids(&[[9, 3, 4, 5, 6]])).unwrap().last_hidden_state;
        let b = m.forward(&ids(&[[9, 3, 4, 5, 7]])).unwrap().last_hidden_state;
        let head = |t: &Tensor| t.narrow(1, 0, 4).unwrap();
        let d = (head(&a) - head(&b)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(d, 0.0);
        let last = (a.narrow(1, 4, 1).unwrap() - b.narrow(1, 4, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(last.to_scalar::<f64>().unwrap() > 0.0);
    }

    #[test]
    fn pooling_follows_the_eos_rule_and_penultimate_stops_early() {
        let mut cfg = tiny_config(ClipActivation::QuickGelu);
        let w = Weights::from_tensors(tiny_weights(&cfg, "", false), "t", DType::F64, &Device::Cpu);
        let x = ids(&[[9, 3, 10, 10, 10], [9, 10, 4, 10, 1]]);
        let rows_at = |t: &Tensor, pos: [usize; 2]| -> Tensor {
            let r: Vec<Tensor> = pos.iter().enumerate().map(|(b, &p)| t.get(b).unwrap().get(p).unwrap()).collect();
            Tensor::stack(&r, 0).unwrap()
        };
        let same = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() == 0.0;

        // eos_token_id = 10: first position holding 10.
        let m = ClipTextModel::load(w.var_builder(), &cfg, false).unwrap();
        let out = m.forward(&x).unwrap();
        assert!(same(&out.pooled, &rows_at(&out.last_hidden_state, [2, 1])));
        assert!(same(&out.penultimate, &m.penultimate(&x).unwrap()));

        // Legacy eos_token_id = 2: first position of the largest id.
        cfg.eos_token_id = 2;
        let m = ClipTextModel::load(w.var_builder(), &cfg, false).unwrap();
        let out = m.forward(&x).unwrap();
        assert!(same(&out.pooled, &rows_at(&out.last_hidden_state, [2, 1])));
        let x2 = ids(&[[9, 3, 4, 5, 6], [1, 1, 1, 1, 1]]);
        let out = m.forward(&x2).unwrap();
        assert!(same(&out.pooled, &rows_at(&out.last_hidden_state, [0, 0])));
    }

    #[test]
    fn bad_ids_are_errors_not_panics() {
        let cfg = tiny_config(ClipActivation::Gelu);
        let w = Weights::from_tensors(tiny_weights(&cfg, "", false), "t", DType::F64, &Device::Cpu);
        let m = ClipTextModel::load(w.var_builder(), &cfg, false).unwrap();
        assert!(m.forward(&ids(&[[9, 3, 11, 10, 10]])).is_err());
        let long = Tensor::zeros((1, 6), DType::U32, &Device::Cpu).unwrap();
        assert!(m.forward(&long).unwrap_err().to_string().contains("max_position_embeddings"));
        let neg = Tensor::from_vec(vec![0i64, -1], (1, 2), &Device::Cpu).unwrap();
        assert!(m.forward(&neg).is_err());
    }

    /// Finite differences through one encoder layer, w.r.t. its input and
    /// every weight, for each activation.
    #[test]
    fn encoder_layer_gradients_match_finite_differences() {
        for act in [ClipActivation::QuickGelu, ClipActivation::Gelu, ClipActivation::GeluTanh] {
            let cfg = tiny_config(act);
            let dev = Device::Cpu;
            let all = tiny_weights(&cfg, "", false);
            let names: Vec<String> = {
                let mut v: Vec<String> = all.keys().filter(|k| k.starts_with("encoder.layers.0.")).cloned().collect();
                v.sort();
                v
            };
            let mut inputs = vec![det_tensor(&[2, 4, cfg.hidden_size], 1)];
            inputs.extend(names.iter().map(|k| all[k].clone()));
            let mask = causal_mask(4, &dev).unwrap().to_dtype(DType::F64).unwrap();
            let err = check(&inputs, |ts| {
                let map: HashMap<String, Tensor> =
                    names.iter().zip(&ts[1..]).map(|(k, t)| (k.trim_start_matches("encoder.layers.0.").to_string(), t.clone())).collect();
                let w = Weights::from_tensors(map, "g", DType::F64, &dev);
                let layer = ClipEncoderLayer::load(w.var_builder(), &cfg)?;
                project(&layer.forward(&ts[0], Some(&mask))?, 3)
            })
            .unwrap();
            assert!(err < 1e-5, "{act:?}: worst relative error {err}");
        }
    }

    /// The embedding table gets gradients through `index_select`, repeated
    /// ids accumulating, and the pooled output reaches the projection.
    #[test]
    fn whole_model_gradients_reach_the_tables() {
        let cfg = ClipTextConfig { num_hidden_layers: 1, ..tiny_config(ClipActivation::QuickGelu) };
        let dev = Device::Cpu;
        let all = tiny_weights(&cfg, "text_model.", true);
        let names = ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight", "text_projection.weight"];
        let inputs: Vec<Tensor> = names.iter().map(|k| all[*k].clone()).collect();
        let x = ids(&[[9, 3, 3, 10, 10], [9, 4, 10, 1, 1]]);
        let err = check(&inputs, |ts| {
            let mut map = all.clone();
            for (k, t) in names.iter().zip(ts) {
                map.insert(k.to_string(), t.clone());
            }
            let w = Weights::from_tensors(map, "g", DType::F64, &dev);
            let m = ClipTextModel::load(w.var_builder(), &cfg, true)?;
            let out = m.forward(&x)?;
            project(&out.pooled, 5)? + project(&out.last_hidden_state, 6)?
        })
        .unwrap();
        assert!(err < 1e-5, "worst relative error {err}");
    }
}
