//! The transformer block of the UNet: diffusers `Attention` with
//! `AttnProcessor2_0` (`models/attention_processor.py`), `FeedForward` +
//! `GEGLU` and `BasicTransformerBlock` (`models/attention.py`), in the
//! configuration every SD 1.x / 2.x / XL UNet uses: LayerNorm pre-norms,
//! no q/k/v bias, GEGLU feed-forward with 4x inner width.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{LayerNorm, Linear};
use crate::ops;

/// diffusers `Attention` (self- or cross-attention).
#[derive(Debug, Clone)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// Checkpoint key `to_out.0` (`to_out.1` is a dropout).
    pub to_out: Linear,
    pub heads: usize,
    pub scale: f64,
    /// Compute scores in f32 for half-precision inputs (diffusers'
    /// `upcast_attention`, set by SD 2.x to avoid f16 overflow).
    pub upcast: bool,
}

impl Attention {
    /// `context_dim`: width of the states keys/values come from (the query
    /// width for self-attention).
    pub fn load(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize, head_dim: usize, upcast: bool) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::load(vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::load(vb.pp("to_out").pp(0), inner, query_dim, true)?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            upcast,
        })
    }

    /// [B, N, C] x optional context [B, M, Cc] -> [B, N, C].
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(ctx)?;
        let v = self.to_v.forward(ctx)?;
        // Heads are read in place from the [B, L, H*D] projections (no
        // split / merge copies); f16 / bf16 upcast as diffusers does.
        let dtype = q.dtype();
        let out = if self.upcast && matches!(dtype, DType::F16 | DType::BF16) {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            ops::attention_heads(&f(&q)?, &f(&k)?, &f(&v)?, self.heads, self.scale)?.to_dtype(dtype)?
        } else {
            ops::attention_heads(&q, &k, &v, self.heads, self.scale)?
        };
        self.to_out.forward(&out)
    }
}

/// diffusers `GEGLU`: one projection to twice the width, `hidden * gelu(gate)`.
#[derive(Debug, Clone)]
pub struct GEGLU {
    pub proj: Linear,
}

impl Module for GEGLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::geglu(&self.proj.forward(x)?)
    }
}

/// diffusers `FeedForward` with `activation_fn = "geglu"`, `mult = 4`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    /// Checkpoint key `net.0`.
    pub act: GEGLU,
    /// Checkpoint key `net.2` (`net.1` is a dropout).
    pub out: Linear,
}

impl FeedForward {
    pub fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        let net = vb.pp("net");
        let act = GEGLU { proj: Linear::load(net.pp(0).pp("proj"), dim, 2 * inner, true)? };
        let out = Linear::load(net.pp(2), inner, dim, true)?;
        Ok(Self { act, out })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.act.forward(x)?)
    }
}

/// diffusers `BasicTransformerBlock` with `norm_type = "layer_norm"`:
/// self-attention, cross-attention, feed-forward, each pre-normed and residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
    /// `only_cross_attention`: attn1 also attends to the encoder states.
    pub only_cross_attention: bool,
}

/// Shape of the transformer blocks of one `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    pub heads: usize,
    pub head_dim: usize,
    pub cross_attention_dim: usize,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

impl BasicTransformerBlock {
    pub fn load(vb: VarBuilder, dim: usize, spec: &TransformerSpec) -> Result<Self> {
        // BasicTransformerBlock's own default `norm_eps`, which
        // Transformer2DModel passes through unchanged for these UNets.
        let eps = 1e-5;
        let self_ctx = if spec.only_cross_attention { spec.cross_attention_dim } else { dim };
        Ok(Self {
            norm1: LayerNorm::load(vb.pp("norm1"), dim, eps)?,
            attn1: Attention::load(vb.pp("attn1"), dim, self_ctx, spec.heads, spec.head_dim, spec.upcast_attention)?,
            norm2: LayerNorm::load(vb.pp("norm2"), dim, eps)?,
            attn2: Attention::load(vb.pp("attn2"), dim, spec.cross_attention_dim, spec.heads, spec.head_dim, spec.upcast_attention)?,
            norm3: LayerNorm::load(vb.pp("norm3"), dim, eps)?,
            ff: FeedForward::load(vb.pp("ff"), dim)?,
            only_cross_attention: spec.only_cross_attention,
        })
    }

    /// x: [B, N, dim], context: [B, M, cross_attention_dim].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let self_ctx = if self.only_cross_attention { Some(context) } else { None };
        let x = (self.attn1.forward(&self.norm1.forward(x)?, self_ctx)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(context))? + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + &x
    }
}
