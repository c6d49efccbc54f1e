//! The UNet's down, mid and up blocks (diffusers
//! `models/unets/unet_2d_blocks.py`).
//!
//! `DownBlock2D` and `CrossAttnDownBlock2D` are one struct here: the plain
//! block is the cross-attention block without its `attentions` (same keys,
//! same order of operations), and likewise for the up blocks. Two copies of
//! the same loop would only be two places to get it wrong.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::TransformerSpec;
use super::transformer::Transformer2DModel;
use crate::models::blocks::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::ops;

/// What every resnet of the UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// The attention part of a cross-attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

impl AttentionSpec {
    /// diffusers builds `Transformer2DModel(heads, channels // heads, ...)`.
    fn load(&self, vb: VarBuilder, channels: usize, depth: usize, groups: usize) -> Result<Transformer2DModel> {
        let spec = TransformerSpec {
            heads: self.heads,
            head_dim: channels / self.heads,
            cross_attention_dim: self.cross_attention_dim,
            only_cross_attention: self.only_cross_attention,
            upcast_attention: self.upcast_attention,
        };
        Transformer2DModel::load(vb, channels, depth, groups, self.use_linear_projection, &spec)
    }
}

fn context(ctx: Option<&Tensor>) -> Result<&Tensor> {
    ctx.ok_or_else(|| candle_core::Error::Msg("a cross-attention block needs encoder_hidden_states".into()))
}

// Gradient checkpointing (`ops::checkpoint`) wraps each resnet and each
// Transformer2DModel, as diffusers' `enable_gradient_checkpointing` does:
// one unit per module keeps the inputs simple (a feature map plus the time
// embedding or the text states) and still drops nearly all activations.
// The up blocks' concatenation with the skip runs inside the unit, so the
// saved inputs are tensors the graph holds anyway, not a new copy.

fn resnet_forward(resnet: &ResnetBlock2D, x: &Tensor, skip: Option<&Tensor>, temb: &Tensor, ckpt: bool) -> Result<Tensor> {
    let run = |r: &ResnetBlock2D, x: &Tensor, skip: Option<&Tensor>, temb: &Tensor| match skip {
        Some(s) => r.forward(&Tensor::cat(&[x, s], 1)?, Some(temb)),
        None => r.forward(x, Some(temb)),
    };
    if !ckpt {
        return run(resnet, x, skip, temb);
    }
    let r = resnet.clone();
    match skip {
        Some(s) => ops::checkpoint(&[x, s, temb], move |a| run(&r, &a[0], Some(&a[1]), &a[2])),
        None => ops::checkpoint(&[x, temb], move |a| run(&r, &a[0], None, &a[1])),
    }
}

fn attention_forward(attn: &Transformer2DModel, x: &Tensor, ctx: &Tensor, ckpt: bool) -> Result<Tensor> {
    if !ckpt {
        return attn.forward(x, ctx);
    }
    let a = attn.clone();
    ops::checkpoint(&[x, ctx], move |i| a.forward(&i[0], &i[1]))
}

/// diffusers `DownBlock2D` (no `attentions`) / `CrossAttnDownBlock2D`.
#[derive(Debug, Clone)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    /// One per resnet for `CrossAttnDownBlock2D`; empty for `DownBlock2D`.
    pub attentions: Vec<Transformer2DModel>,
    /// Checkpoint key `downsamplers.0`; absent in the last block.
    pub downsamplers: Option<Downsample2D>,
    /// Recompute each resnet and transformer in the backward pass instead
    /// of keeping their activations (`ops::checkpoint`); off by default.
    pub gradient_checkpointing: bool,
}

impl DownBlock {
    /// `depths`: transformer blocks per resnet layer (its length is the
    /// number of layers); `attn` is `None` for `DownBlock2D`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        depths: &[usize],
        resnet: ResnetSpec,
        attn: Option<AttentionSpec>,
        add_downsample: bool,
        downsample_padding: usize,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(depths.len());
        let mut attentions = Vec::new();
        for (i, &depth) in depths.iter().enumerate() {
            let cin = if i == 0 { in_channels } else { out_channels };
            resnets.push(ResnetBlock2D::load(
                vb.pp("resnets").pp(i),
                cin,
                out_channels,
                Some(resnet.temb_channels),
                resnet.groups,
                resnet.eps,
                1.0,
            )?);
            if let Some(a) = &attn {
                attentions.push(a.load(vb.pp("attentions").pp(i), out_channels, depth, resnet.groups)?);
            }
        }
        let downsamplers = if add_downsample {
            Some(Downsample2D::load(vb.pp("downsamplers").pp(0), out_channels, out_channels, downsample_padding)?)
        } else {
            None
        };
        Ok(Self { resnets, attentions, downsamplers, gradient_checkpointing: false })
    }

    /// Returns the output and the states the up path will use as skips
    /// (one per resnet, plus the downsampled output).
    pub fn forward(&self, x: &Tensor, temb: &Tensor, ctx: Option<&Tensor>) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        let ckpt = self.gradient_checkpointing;
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet_forward(resnet, &x, None, temb, ckpt)?;
            if let Some(attn) = self.attentions.get(i) {
                x = attention_forward(attn, &x, context(ctx)?, ckpt)?;
            }
            states.push(x.clone());
        }
        if let Some(d) = &self.downsamplers {
            x = d.forward(&x)?;
            states.push(x.clone());
        }
        Ok((x, states))
    }
}

/// diffusers `UNetMidBlock2DCrossAttn` with one layer: resnet, transformer, resnet.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    /// As [`DownBlock::gradient_checkpointing`].
    pub gradient_checkpointing: bool,
}

impl UNetMidBlock2DCrossAttn {
    pub fn load(vb: VarBuilder, channels: usize, depth: usize, resnet: ResnetSpec, attn: AttentionSpec, output_scale_factor: f64) -> Result<Self> {
        let load_resnet = |i: usize| {
            ResnetBlock2D::load(
                vb.pp("resnets").pp(i),
                channels,
                channels,
                Some(resnet.temb_channels),
                resnet.groups,
                resnet.eps,
                output_scale_factor,
            )
        };
        let resnets = vec![load_resnet(0)?, load_resnet(1)?];
        // The mid block never uses only_cross_attention (diffusers does not pass it).
        let attn = AttentionSpec { only_cross_attention: false, ..attn };
        let attentions = vec![attn.load(vb.pp("attentions").pp(0), channels, depth, resnet.groups)?];
        Ok(Self { resnets, attentions, gradient_checkpointing: false })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let ckpt = self.gradient_checkpointing;
        let mut x = resnet_forward(&self.resnets[0], x, None, temb, ckpt)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attention_forward(attn, &x, ctx, ckpt)?;
            x = resnet_forward(resnet, &x, None, temb, ckpt)?;
        }
        Ok(x)
    }
}

/// diffusers `UpBlock2D` (no `attentions`) / `CrossAttnUpBlock2D`.
#[derive(Debug, Clone)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    /// Checkpoint key `upsamplers.0`; absent in the last block.
    pub upsamplers: Option<Upsample2D>,
    /// As [`DownBlock::gradient_checkpointing`].
    pub gradient_checkpointing: bool,
}

impl UpBlock {
    /// `in_channels`: the matching down block's input width (the last skip's
    /// width); `prev_output_channels`: the width coming from below.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        prev_output_channels: usize,
        out_channels: usize,
        depths: &[usize],
        resnet: ResnetSpec,
        attn: Option<AttentionSpec>,
        add_upsample: bool,
    ) -> Result<Self> {
        let n = depths.len();
        let mut resnets = Vec::with_capacity(n);
        let mut attentions = Vec::new();
        for (i, &depth) in depths.iter().enumerate() {
            let skip = if i == n - 1 { in_channels } else { out_channels };
            let cin = if i == 0 { prev_output_channels } else { out_channels };
            resnets.push(ResnetBlock2D::load(
                vb.pp("resnets").pp(i),
                cin + skip,
                out_channels,
                Some(resnet.temb_channels),
                resnet.groups,
                resnet.eps,
                1.0,
            )?);
            if let Some(a) = &attn {
                attentions.push(a.load(vb.pp("attentions").pp(i), out_channels, depth, resnet.groups)?);
            }
        }
        let upsamplers =
            if add_upsample { Some(Upsample2D::load(vb.pp("upsamplers").pp(0), out_channels, out_channels)?) } else { None };
        Ok(Self { resnets, attentions, upsamplers, gradient_checkpointing: false })
    }

    /// `skips`: this block's skip states in down-path order (the last one is
    /// consumed first). `upsample_size`: the target size when the latent is
    /// not a multiple of the total downsampling factor.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        ctx: Option<&Tensor>,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        if skips.len() != self.resnets.len() {
            candle_core::bail!("up block: {} skip states for {} resnets", skips.len(), self.resnets.len());
        }
        let ckpt = self.gradient_checkpointing;
        let mut x = x.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            x = resnet_forward(resnet, &x, Some(skip), temb, ckpt)?;
            if let Some(attn) = self.attentions.get(i) {
                x = attention_forward(attn, &x, context(ctx)?, ckpt)?;
            }
        }
        match &self.upsamplers {
            Some(u) => u.forward(&x, upsample_size),
            None => Ok(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::unet::testing::{random_weights, weights};
    use crate::ops::gradcheck::{check, det_tensor, project};

    const RESNET: ResnetSpec = ResnetSpec { temb_channels: 6, groups: 2, eps: 1e-5 };

    fn cross_attn_down(vb: VarBuilder, linear: bool) -> Result<DownBlock> {
        let attn = AttentionSpec {
            heads: 2,
            cross_attention_dim: 5,
            use_linear_projection: linear,
            only_cross_attention: false,
            upcast_attention: false,
        };
        DownBlock::load(vb, 4, 8, &[1], RESNET, Some(attn), true, 1)
    }

    /// Finite differences through a whole CrossAttnDownBlock2D (resnet,
    /// transformer with self/cross attention and GEGLU, downsampler): the
    /// input, the text states, the time embedding and weights of each part.
    #[test]
    fn cross_attn_down_block_gradients_match_finite_differences() {
        for linear in [true, false] {
            let base = random_weights(|vb| cross_attn_down(vb, linear));
            let keys = [
                "resnets.0.conv1.weight",
                "attentions.0.norm.weight",
                "attentions.0.proj_in.weight",
                "attentions.0.transformer_blocks.0.attn1.to_q.weight",
                "attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "attentions.0.transformer_blocks.0.norm3.bias",
                "attentions.0.transformer_blocks.0.ff.net.2.weight",
                "downsamplers.0.conv.bias",
            ];
            let mut inputs = vec![det_tensor(&[1, 4, 4, 4], 1), det_tensor(&[1, 3, 5], 2), det_tensor(&[1, 6], 3)];
            inputs.extend(keys.iter().map(|k| base[*k].clone()));
            let worst = check(&inputs, |a| {
                let mut map = base.clone();
                for (k, t) in keys.iter().zip(&a[3..]) {
                    map.insert(k.to_string(), t.clone());
                }
                let w = weights(map);
                let block = cross_attn_down(w.var_builder(), linear)?;
                let (y, states) = block.forward(&a[0], &a[2], Some(&a[1]))?;
                project(&y, 7)? + project(&states[0], 8)?
            })
            .unwrap();
            assert!(worst < 1e-5, "linear={linear}: worst relative error {worst}");
        }
    }

    #[test]
    fn strict_load_uses_every_key() {
        let map = random_weights(|vb| cross_attn_down(vb, false));
        let w = weights(map);
        cross_attn_down(w.var_builder(), false).unwrap();
        w.finish().unwrap();
        // The same weights do not fit the Linear-projection layout.
        let w = weights(random_weights(|vb| cross_attn_down(vb, false)));
        cross_attn_down(w.var_builder(), true).unwrap();
        let msg = w.finish().unwrap_err().to_string();
        assert!(msg.contains("proj_in.weight"), "{msg}");
    }
}
