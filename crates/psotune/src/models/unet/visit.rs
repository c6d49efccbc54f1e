//! The UNet's `Linear` / `Conv2d` layers by dotted module path, the names
//! `UNet2DConditionModel.named_modules()` gives in diffusers (and so the
//! names PEFT / diffusers LoRA files use).

use candle_core::Result;

use super::attention::{Attention, BasicTransformerBlock, FeedForward};
use super::blocks::{DownBlock, UNetMidBlock2DCrossAttn, UpBlock};
use super::embeddings::TimestepEmbedding;
use super::model::UNet2DConditionModel;
use super::transformer::{Projection, Transformer2DModel};
use crate::models::blocks::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::nn::modules::{join, LayerMut, Modules};

type Visitor<'a> = dyn FnMut(&str, LayerMut<'_>) -> Result<()> + 'a;

impl Modules for UNet2DConditionModel {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.conv_in.visit_mut(&join(p, "conv_in"), f)?;
        self.time_embedding.visit_mut(&join(p, "time_embedding"), f)?;
        self.add_embedding.visit_mut(&join(p, "add_embedding"), f)?;
        self.encoder_hid_proj.visit_mut(&join(p, "encoder_hid_proj"), f)?;
        self.down_blocks.visit_mut(&join(p, "down_blocks"), f)?;
        self.mid_block.visit_mut(&join(p, "mid_block"), f)?;
        self.up_blocks.visit_mut(&join(p, "up_blocks"), f)?;
        self.conv_out.visit_mut(&join(p, "conv_out"), f)
    }
}

impl Modules for TimestepEmbedding {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.linear_1.visit_mut(&join(p, "linear_1"), f)?;
        self.linear_2.visit_mut(&join(p, "linear_2"), f)?;
        self.cond_proj.visit_mut(&join(p, "cond_proj"), f)
    }
}

impl Modules for DownBlock {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.attentions.visit_mut(&join(p, "attentions"), f)?;
        self.resnets.visit_mut(&join(p, "resnets"), f)?;
        self.downsamplers.visit_mut(&join(p, "downsamplers.0"), f)
    }
}

impl Modules for UNetMidBlock2DCrossAttn {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.attentions.visit_mut(&join(p, "attentions"), f)?;
        self.resnets.visit_mut(&join(p, "resnets"), f)
    }
}

impl Modules for UpBlock {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.attentions.visit_mut(&join(p, "attentions"), f)?;
        self.resnets.visit_mut(&join(p, "resnets"), f)?;
        self.upsamplers.visit_mut(&join(p, "upsamplers.0"), f)
    }
}

impl Modules for ResnetBlock2D {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.conv1.visit_mut(&join(p, "conv1"), f)?;
        self.time_emb_proj.visit_mut(&join(p, "time_emb_proj"), f)?;
        self.conv2.visit_mut(&join(p, "conv2"), f)?;
        self.conv_shortcut.visit_mut(&join(p, "conv_shortcut"), f)
    }
}

impl Modules for Downsample2D {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.conv.visit_mut(&join(p, "conv"), f)
    }
}

impl Modules for Upsample2D {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.conv.visit_mut(&join(p, "conv"), f)
    }
}

impl Modules for Transformer2DModel {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.proj_in.visit_mut(&join(p, "proj_in"), f)?;
        self.transformer_blocks.visit_mut(&join(p, "transformer_blocks"), f)?;
        self.proj_out.visit_mut(&join(p, "proj_out"), f)
    }
}

impl Modules for Projection {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        match self {
            Projection::Linear(l) => l.visit_mut(p, f),
            Projection::Conv(c) => c.visit_mut(p, f),
        }
    }
}

impl Modules for BasicTransformerBlock {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.attn1.visit_mut(&join(p, "attn1"), f)?;
        self.attn2.visit_mut(&join(p, "attn2"), f)?;
        self.ff.visit_mut(&join(p, "ff"), f)
    }
}

impl Modules for Attention {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.to_q.visit_mut(&join(p, "to_q"), f)?;
        self.to_k.visit_mut(&join(p, "to_k"), f)?;
        self.to_v.visit_mut(&join(p, "to_v"), f)?;
        self.to_out.visit_mut(&join(p, "to_out.0"), f)
    }
}

impl Modules for FeedForward {
    fn visit_mut(&mut self, p: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.act.proj.visit_mut(&join(p, "net.0.proj"), f)?;
        self.out.visit_mut(&join(p, "net.2"), f)
    }
}
