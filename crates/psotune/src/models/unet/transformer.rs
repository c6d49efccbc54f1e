//! diffusers `Transformer2DModel` on continuous inputs
//! (`models/transformers/transformer_2d.py`, `_operate_on_continuous_inputs`
//! and `_get_output_for_continuous_inputs`): group norm, project in, a stack
//! of `BasicTransformerBlock`s over the H*W tokens, project out, residual.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{BasicTransformerBlock, TransformerSpec};
use crate::nn::{Conv2d, GroupNorm, Linear};

/// `proj_in` / `proj_out`: a Linear on tokens (`use_linear_projection`, SD 2.x
/// and XL) or a 1x1 Conv2d on the feature map (SD 1.x).
#[derive(Debug, Clone)]
pub enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn load(vb: VarBuilder, cin: usize, cout: usize, linear: bool) -> Result<Self> {
        if linear {
            Ok(Self::Linear(Linear::load(vb, cin, cout, true)?))
        } else {
            Ok(Self::Conv(Conv2d::load(vb, cin, cout, 1, 1, 0)?))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModel {
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        num_layers: usize,
        groups: usize,
        use_linear_projection: bool,
        spec: &TransformerSpec,
    ) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        // Transformer2DModel hard-codes eps 1e-6 for this norm.
        let norm = GroupNorm::load(vb.pp("norm"), groups, channels, 1e-6)?;
        let proj_in = Projection::load(vb.pp("proj_in"), channels, inner, use_linear_projection)?;
        let blocks = vb.pp("transformer_blocks");
        let transformer_blocks =
            (0..num_layers).map(|j| BasicTransformerBlock::load(blocks.pp(j), inner, spec)).collect::<Result<Vec<_>>>()?;
        let proj_out = Projection::load(vb.pp("proj_out"), inner, channels, use_linear_projection)?;
        Ok(Self { norm, proj_in, transformer_blocks, proj_out })
    }

    /// x: [B, C, H, W], context: [B, M, cross_attention_dim] -> [B, C, H, W].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // [B, C, H, W] <-> [B, H*W, C]
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
        };
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
        };
        let mut tokens = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(&normed)?)?,
            Projection::Conv(c) => to_tokens(&c.forward(&normed)?)?,
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Linear(l) => to_map(&l.forward(&tokens)?)?,
            Projection::Conv(c) => c.forward(&to_map(&tokens)?)?,
        };
        out + x
    }
}
