//! diffusers `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`,
//! `__init__` and `forward`) for the SD 1.x / 2.x / XL families.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{AttentionSpec, DownBlock, ResnetSpec, UNetMidBlock2DCrossAttn, UpBlock};
use super::config::{DownBlockType, MidBlockType, UNetConfig, UpBlockType};
use super::embeddings::{apply, timestep_embedding, timesteps_f32, TimestepEmbedding};
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::ops;

/// SDXL's extra conditioning (`added_cond_kwargs`).
#[derive(Debug, Clone)]
pub struct AddedCond {
    /// Pooled text embeddings of text_encoder_2, [B, D].
    pub text_embeds: Tensor,
    /// [B, 6]: original (h, w), crop top-left (y, x), target (h, w).
    pub time_ids: Tensor,
}

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    /// SDXL `add_embedding` (its `add_time_proj` has no weights).
    pub add_embedding: Option<TimestepEmbedding>,
    /// `encoder_hid_dim_type = "text_proj"`.
    pub encoder_hid_proj: Option<Linear>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<UNetMidBlock2DCrossAttn>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    config: UNetConfig,
}

impl UNet2DConditionModel {
    pub fn load(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let kin = cfg.conv_in_kernel;
        let conv_in = Conv2d::load(vb.pp("conv_in"), cfg.in_channels, ch[0], kin, 1, (kin - 1) / 2)?;
        let temb = cfg.time_embed_dim;
        let time_embedding =
            TimestepEmbedding::load(vb.pp("time_embedding"), ch[0], temb, cfg.time_cond_proj_dim, cfg.timestep_post_act)?;
        let add_embedding = match &cfg.addition_embed {
            Some(a) => Some(TimestepEmbedding::load(vb.pp("add_embedding"), a.projection_class_embeddings_input_dim, temb, None, None)?),
            None => None,
        };
        let encoder_hid_proj = match cfg.encoder_hid_dim {
            Some(d) => Some(Linear::load(vb.pp("encoder_hid_proj"), d, cfg.cross_attention_dim[0], true)?),
            None => None,
        };

        let resnet = ResnetSpec { temb_channels: temb, groups: cfg.norm_num_groups, eps: cfg.norm_eps };
        let attn_spec = |heads: usize, cross: usize, only_cross: bool| AttentionSpec {
            heads,
            cross_attention_dim: cross,
            use_linear_projection: cfg.use_linear_projection,
            only_cross_attention: only_cross,
            upcast_attention: cfg.upcast_attention,
        };

        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let attn = match kind {
                DownBlockType::DownBlock2D => None,
                DownBlockType::CrossAttnDownBlock2D => {
                    Some(attn_spec(cfg.num_attention_heads[i], cfg.cross_attention_dim[i], cfg.only_cross_attention[i]))
                }
            };
            down_blocks.push(DownBlock::load(
                vb.pp("down_blocks").pp(i),
                cin,
                ch[i],
                &cfg.transformer_layers_per_block[i],
                resnet,
                attn,
                i + 1 < n,
                cfg.downsample_padding,
            )?);
        }

        let mid_block = match cfg.mid_block_type {
            Some(MidBlockType::UNetMidBlock2DCrossAttn) => Some(UNetMidBlock2DCrossAttn::load(
                vb.pp("mid_block"),
                ch[n - 1],
                cfg.mid_transformer_layers,
                resnet,
                attn_spec(cfg.num_attention_heads[n - 1], cfg.cross_attention_dim[n - 1], false),
                cfg.mid_block_scale_factor,
            )?),
            None => None,
        };

        let mut up_blocks = Vec::with_capacity(n);
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let r = n - 1 - i; // the matching down block
            let out = ch[r];
            let prev = if i == 0 { ch[n - 1] } else { ch[r + 1] };
            let cin = ch[r.saturating_sub(1)];
            let attn = match kind {
                UpBlockType::UpBlock2D => None,
                UpBlockType::CrossAttnUpBlock2D => {
                    Some(attn_spec(cfg.num_attention_heads[r], cfg.cross_attention_dim[r], cfg.only_cross_attention[r]))
                }
            };
            up_blocks.push(UpBlock::load(
                vb.pp("up_blocks").pp(i),
                cin,
                prev,
                out,
                &cfg.up_transformer_layers_per_block[i],
                resnet,
                attn,
                i + 1 < n,
            )?);
        }

        let conv_norm_out = GroupNorm::load(vb.pp("conv_norm_out"), cfg.norm_num_groups, ch[0], cfg.norm_eps)?;
        let kout = cfg.conv_out_kernel;
        let conv_out = Conv2d::load(vb.pp("conv_out"), ch[0], cfg.out_channels, kout, 1, (kout - 1) / 2)?;
        Ok(Self {
            conv_in,
            time_embedding,
            add_embedding,
            encoder_hid_proj,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Gradient checkpointing (diffusers' `enable_gradient_checkpointing`):
    /// every resnet and transformer of the down, mid and up blocks keeps only
    /// its inputs for the backward pass and is run again there
    /// ([`crate::ops::checkpoint`]). Same gradients, far less memory held
    /// between forward and backward, about one more forward of compute.
    /// Forward passes without gradients are unaffected.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        for b in &mut self.down_blocks {
            b.gradient_checkpointing = on;
        }
        if let Some(m) = &mut self.mid_block {
            m.gradient_checkpointing = on;
        }
        for b in &mut self.up_blocks {
            b.gradient_checkpointing = on;
        }
    }

    /// Whether [`Self::set_gradient_checkpointing`] is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.down_blocks.first().is_some_and(|b| b.gradient_checkpointing)
    }

    /// Predict from `sample` [B, C, H, W] at `timesteps` ([B] per sample, or
    /// [1] / a scalar for all; any dtype) given `encoder_hidden_states`
    /// [B, M, D]. `added` is required by SDXL-style (`text_time`) UNets.
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, encoder_hidden_states: &Tensor, added: Option<&AddedCond>) -> Result<Tensor> {
        self.forward_with_cond(sample, timesteps, encoder_hidden_states, added, None)
    }

    /// [`Self::forward`] with diffusers' `timestep_cond`: the guidance-scale
    /// embedding ([`super::guidance_scale_embedding`], [B, time_cond_proj_dim])
    /// of LCM-distilled UNets. Without it such a UNet runs as diffusers does
    /// with `timestep_cond=None`.
    pub fn forward_with_cond(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, _, h, w) = sample.dims4()?;
        let dtype = sample.dtype();
        let device = sample.device();
        if encoder_hidden_states.dim(0)? != b {
            candle_core::bail!("encoder_hidden_states has batch {}, sample has {b}", encoder_hidden_states.dim(0)?);
        }

        // Latents that are not a multiple of 2^num_upsamplers: each
        // upsampler is told the size of the skip it will meet.
        let factor = 1usize << cfg.num_upsamplers();
        let forward_upsample_size = h % factor != 0 || w % factor != 0;

        let sample = if cfg.center_input_sample { ((sample * 2.0)? - 1.0)? } else { sample.clone() };

        // 1. time
        let t = timesteps_f32(timesteps, b, "timesteps")?;
        let t_emb = timestep_embedding(&t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift, device)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb, timestep_cond)?;
        if let (Some(add), Some(a)) = (&self.add_embedding, &cfg.addition_embed) {
            let Some(cond) = added else {
                candle_core::bail!("this UNet has addition_embed_type \"text_time\" (SDXL): pass text_embeds and time_ids")
            };
            let tb = cond.text_embeds.dim(0)?;
            let ids = timesteps_f32(&cond.time_ids, cond.time_ids.elem_count(), "time_ids")?;
            if ids.len() % tb != 0 {
                candle_core::bail!("time_ids has {} values for {tb} text_embeds rows", ids.len());
            }
            let time_embeds = timestep_embedding(&ids, a.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift, device)?
                .reshape((tb, ()))?
                .to_dtype(dtype)?;
            let add_embeds = Tensor::cat(&[&cond.text_embeds.to_dtype(dtype)?, &time_embeds], 1)?;
            emb = emb.broadcast_add(&add.forward(&add_embeds, None)?)?;
        }
        if let Some(act) = cfg.time_embedding_act_fn {
            emb = apply(act, &emb)?;
        }
        let ctx = match &self.encoder_hid_proj {
            Some(p) => p.forward(encoder_hidden_states)?,
            None => encoder_hidden_states.clone(),
        };

        // 2. pre-process
        let mut x = self.conv_in.forward(&sample)?;

        // 3. down
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (y, states) = block.forward(&x, &emb, Some(&ctx))?;
            x = y;
            skips.extend(states);
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, &emb, &ctx)?;
        }

        // 5. up
        let n_up = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let k = block.resnets.len();
            if skips.len() < k {
                candle_core::bail!("up block {i} needs {k} skip states, {} left", skips.len());
            }
            let res = skips.split_off(skips.len() - k);
            let upsample_size = match skips.last() {
                Some(s) if forward_upsample_size && i + 1 < n_up => {
                    let (_, _, sh, sw) = s.dims4()?;
                    Some((sh, sw))
                }
                _ => None,
            };
            x = block.forward(&x, &res, &emb, Some(&ctx), upsample_size)?;
        }

        // 6. post-process
        let x = ops::silu(&self.conv_norm_out.forward(&x)?)?;
        self.conv_out.forward(&x)
    }

    pub fn dtype(&self) -> DType {
        self.conv_in.weight.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::unet::testing::{random_weights, weights};
    use crate::ops::gradcheck::{check, det_tensor, project};

    fn tiny_config(sdxl: bool) -> UNetConfig {
        crate::models::unet::testing::tiny_config(sdxl, true)
    }

    /// Gradients w.r.t. the latent through the whole UNet, on a 3x3 latent so
    /// the up path resizes to the skip size (not a plain 2x).
    #[test]
    fn whole_unet_input_gradient_matches_finite_differences() {
        let cfg = tiny_config(false);
        let map = random_weights(|vb| UNet2DConditionModel::load(vb, &cfg));
        let w = weights(map);
        let unet = UNet2DConditionModel::load(w.var_builder(), &cfg).unwrap();
        w.finish().unwrap();
        let t = Tensor::new(&[421.0f64], &candle_core::Device::Cpu).unwrap();
        let ctx = det_tensor(&[1, 2, 5], 5);
        let worst = check(&[det_tensor(&[1, 4, 3, 3], 4)], |a| {
            let y = unet.forward(&a[0], &t, &ctx, None)?;
            project(&y, 9)
        })
        .unwrap();
        assert!(worst < 1e-5, "worst relative error {worst}");
    }

    #[test]
    fn per_sample_timesteps_change_only_their_sample() {
        let cfg = tiny_config(true);
        let w = weights(random_weights(|vb| UNet2DConditionModel::load(vb, &cfg)));
        let unet = UNet2DConditionModel::load(w.var_builder(), &cfg).unwrap();
        w.finish().unwrap();
        let dev = candle_core::Device::Cpu;
        let x = Tensor::cat(&[det_tensor(&[1, 4, 4, 4], 1), det_tensor(&[1, 4, 4, 4], 1)], 0).unwrap();
        let ctx = Tensor::cat(&[det_tensor(&[1, 2, 5], 2), det_tensor(&[1, 2, 5], 2)], 0).unwrap();
        let added = AddedCond {
            text_embeds: Tensor::cat(&[det_tensor(&[1, 3], 3), det_tensor(&[1, 3], 3)], 0).unwrap(),
            time_ids: Tensor::new(&[[8f64, 8., 0., 0., 8., 8.], [8., 8., 0., 0., 8., 8.]], &dev).unwrap(),
        };
        let ts = Tensor::new(&[10i64, 900], &dev).unwrap();
        let y = unet.forward(&x, &ts, &ctx, Some(&added)).unwrap();
        let y0 = unet.forward(&x.narrow(0, 0, 1).unwrap(), &Tensor::new(&[10u32], &dev).unwrap(), &ctx.narrow(0, 0, 1).unwrap(), Some(&AddedCond {
            text_embeds: added.text_embeds.narrow(0, 0, 1).unwrap(),
            time_ids: added.time_ids.narrow(0, 0, 1).unwrap(),
        }))
        .unwrap();
        let d0 = (y.narrow(0, 0, 1).unwrap() - &y0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let d1 = (y.narrow(0, 1, 1).unwrap() - &y0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d0 < 1e-12, "{d0}");
        assert!(d1 > 1e-6, "the second timestep had no effect");
        // Three timesteps for two samples is an error, not a broadcast.
        let bad = Tensor::new(&[1f32, 2., 3.], &dev).unwrap();
        assert!(unet.forward(&x, &bad, &ctx, Some(&added)).is_err());
    }
}

#[cfg(test)]
#[path = "checkpointing_tests.rs"]
mod checkpointing_tests;
