//! `UNetConfig`: a diffusers `unet/config.json` for `UNet2DConditionModel`
//! (diffusers 0.42.1 `models/unets/unet_2d_condition.py`), resolved into
//! per-block values.
//!
//! Every key is read with diffusers' `__init__` default when absent; keys we
//! do not know are ignored (configs carry `_diffusers_version` and friends).
//! A value that would build a *different* network than the one we implement
//! (a class embedding, scale-shift resnets, dual cross attention, ...) is a
//! typed error naming the file and the key, never a silently wrong model.
//!
//! Keys read by diffusers that cannot change the blocks built here, and so
//! are not read: `resnet_out_scale_factor`, `resnet_skip_time_act`,
//! `cross_attention_norm`, `mid_block_only_cross_attention` and
//! `addition_embed_type_num_heads` only reach block or embedding types we
//! reject; `dropout` is 0 in every SD config and we never apply dropout
//! (inference is unaffected either way).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The down blocks we implement (`get_down_block` in `unet_2d_blocks.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    DownBlock2D,
    CrossAttnDownBlock2D,
}

/// The up blocks we implement (`get_up_block` in `unet_2d_blocks.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    UpBlock2D,
    CrossAttnUpBlock2D,
}

/// The mid block we implement (`get_mid_block`); the config may also say
/// `null`, which leaves the mid block out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidBlockType {
    UNetMidBlock2DCrossAttn,
}

/// diffusers `get_activation` names we can apply to the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// "silu" or "swish".
    Silu,
    /// "gelu": `nn.GELU()`, the exact erf form.
    Gelu,
    Relu,
}

/// SDXL's `addition_embed_type: "text_time"`: pooled text embeddings and
/// sinusoidal embeddings of the six `time_ids` (original size, crop, target
/// size), concatenated and projected, are added to the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeEmbedConfig {
    /// Sinusoid width per time id (`addition_time_embed_dim`, 256 in SDXL).
    pub addition_time_embed_dim: usize,
    /// Width of `concat(text_embeds, time_embeds)`
    /// (`projection_class_embeddings_input_dim`, 2816 in SDXL).
    pub projection_class_embeddings_input_dim: usize,
}

/// A `UNet2DConditionModel` config, lists already expanded per block.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Latent (height, width) the model was trained at, if the config says.
    pub sample_size: Option<(usize, usize)>,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: Vec<usize>,
    /// Per down block; the up blocks use the reversed list.
    pub only_cross_attention: Vec<bool>,
    /// The NUMBER of attention heads per down block. diffusers reads it from
    /// `attention_head_dim` when `num_attention_heads` is null (its
    /// documented naming mistake, issue #2011); the head width is
    /// `channels / heads`.
    pub num_attention_heads: Vec<usize>,
    /// Per down block.
    pub cross_attention_dim: Vec<usize>,
    /// Transformer blocks per resnet layer, per down block.
    pub transformer_layers_per_block: Vec<Vec<usize>>,
    /// Transformer blocks per resnet layer, per up block (in up-block order).
    pub up_transformer_layers_per_block: Vec<Vec<usize>>,
    /// Transformer blocks in the mid block's single attention (the last
    /// entry of `transformer_layers_per_block`, or its first depth).
    pub mid_transformer_layers: usize,
    pub downsample_padding: usize,
    /// `output_scale_factor` of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub use_linear_projection: bool,
    /// Attention scores in f32 for half-precision weights (SD 2.x at 768px
    /// overflows f16 otherwise).
    pub upcast_attention: bool,
    /// Width of the time embedding (`time_embedding_dim`, default
    /// `4 * block_out_channels[0]`).
    pub time_embed_dim: usize,
    pub time_embedding_act_fn: Option<Activation>,
    pub timestep_post_act: Option<Activation>,
    /// LCM-distilled UNets: width of the guidance-scale embedding added to
    /// the timestep sinusoids through `time_embedding.cond_proj`.
    pub time_cond_proj_dim: Option<usize>,
    pub addition_embed: Option<TextTimeEmbedConfig>,
    /// `encoder_hid_dim` with `encoder_hid_dim_type` "text_proj": the
    /// encoder states are projected to `cross_attention_dim` first.
    pub encoder_hid_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
}

/// An int-or-list key. `Many` is tried first so that, nested, `[1, 2]` reads
/// as a list of ints rather than as one inner list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

/// Reads keys out of the JSON object with the file and key in every error.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::config(self.path, format!("`{key}`: {msg}"))
    }

    /// The value of `key`, or `default` when absent. An explicit `null` is
    /// parsed as `T` (so it is only accepted when `T` is an `Option`).
    fn get<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| self.err(key, format!("{e} (got {v})"))),
        }
    }

    /// A boolean key. An explicit `null` is false, as diffusers' `if flag:`
    /// reads the `None` it is given (SDXL's config has
    /// `"upcast_attention": null`).
    fn flag(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self.get::<Option<bool>>(key, Some(default))?.unwrap_or(false))
    }

    /// Reject any value but the ones listed (diffusers' default first).
    fn only<T>(&self, key: &str, default: T, allowed: &[T], why: &str) -> Result<T>
    where
        T: DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let v = self.get(key, default)?;
        if allowed.contains(&v) {
            Ok(v)
        } else {
            Err(self.err(key, format!("{v:?} is not supported: {why}")))
        }
    }

    fn per_block<T: Clone>(&self, key: &str, v: OneOrMany<T>, n: usize) -> Result<Vec<T>> {
        match v {
            OneOrMany::One(x) => Ok(vec![x; n]),
            OneOrMany::Many(xs) if xs.len() == n => Ok(xs),
            OneOrMany::Many(xs) => Err(self.err(key, format!("has {} entries for {n} down blocks", xs.len()))),
        }
    }
}

/// Transformer depth per resnet layer of one block: an int repeats, a list
/// is indexed per layer (diffusers indexes `[i]`, so a longer list is
/// accepted and its tail unused).
fn per_layer(r: &Reader, key: &str, v: &OneOrMany<usize>, layers: usize) -> Result<Vec<usize>> {
    match v {
        OneOrMany::One(n) => Ok(vec![*n; layers]),
        OneOrMany::Many(xs) if xs.len() >= layers => Ok(xs[..layers].to_vec()),
        OneOrMany::Many(xs) => Err(r.err(key, format!("lists {} transformer depths for a block of {layers} layers", xs.len()))),
    }
}

fn activation(r: &Reader, key: &str, name: Option<String>) -> Result<Option<Activation>> {
    match name.as_deref() {
        None => Ok(None),
        Some("silu") | Some("swish") => Ok(Some(Activation::Silu)),
        Some("gelu") => Ok(Some(Activation::Gelu)),
        Some("relu") => Ok(Some(Activation::Relu)),
        Some(other) => Err(r.err(key, format!("activation {other:?} is not supported (silu, swish, gelu, relu)"))),
    }
}

/// diffusers strips a "UNetRes" prefix from block type names.
fn block_name(s: &str) -> &str {
    s.strip_prefix("UNetRes").unwrap_or(s)
}

impl UNetConfig {
    /// Read `unet/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parse config text; `source` names the file in errors.
    pub fn from_json(text: &str, source: impl AsRef<Path>) -> Result<Self> {
        let path = source.as_ref();
        let value: Value =
            serde_json::from_str(text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
        let Value::Object(map) = value else {
            return Err(Error::config(path, "expected a JSON object"));
        };
        Self::from_map(&map, path)
    }

    fn from_map(map: &Map<String, Value>, path: &Path) -> Result<Self> {
        let r = Reader { map, path };
        let class: Option<String> = r.get("_class_name", None)?;
        if let Some(c) = class.as_deref() {
            if c != "UNet2DConditionModel" {
                return Err(r.err("_class_name", format!("{c:?} is not a UNet2DConditionModel")));
            }
        }

        // Keys whose non-default values change the network into one we do
        // not build.
        r.only::<Option<String>>("class_embed_type", None, &[None], "class embeddings are not implemented")?;
        r.only::<Option<usize>>("num_class_embeds", None, &[None], "class embeddings are not implemented")?;
        if r.flag("class_embeddings_concat", false)? {
            return Err(r.err("class_embeddings_concat", "true is not supported: class embeddings are not implemented"));
        }
        r.only("resnet_time_scale_shift", "default".to_string(), &["default".to_string()], "only \"default\" resnets are implemented")?;
        if r.flag("dual_cross_attention", false)? {
            return Err(r.err("dual_cross_attention", "true is not supported: DualTransformer2DModel is not implemented"));
        }
        r.only("attention_type", "default".to_string(), &["default".to_string()], "GLIGEN attention is not implemented")?;
        r.only("time_embedding_type", "positional".to_string(), &["positional".to_string()], "only sinusoidal time embeddings are implemented")?;
        let act: String = r.get("act_fn", "silu".to_string())?;
        if act != "silu" && act != "swish" {
            return Err(r.err("act_fn", format!("{act:?} is not supported: the resnets are implemented with silu")));
        }
        // diffusers 0.42 raises on this key too (issue #2011): heads come from
        // `attention_head_dim`.
        let nah: Option<Value> = r.get("num_attention_heads", None)?;
        if nah.is_some() {
            return Err(r.err(
                "num_attention_heads",
                "must be null: diffusers' UNet2DConditionModel refuses it and reads the head count from attention_head_dim",
            ));
        }

        let down_names: Vec<String> = r.get(
            "down_block_types",
            ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec(),
        )?;
        let up_names: Vec<String> = r.get(
            "up_block_types",
            ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec(),
        )?;
        let mid_name: Option<String> = r.get("mid_block_type", Some("UNetMidBlock2DCrossAttn".to_string()))?;
        let down_block_types = down_names
            .iter()
            .map(|s| match block_name(s) {
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
                other => Err(r.err("down_block_types", format!("{other:?} is not supported (DownBlock2D, CrossAttnDownBlock2D)"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_block_types = up_names
            .iter()
            .map(|s| match block_name(s) {
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
                other => Err(r.err("up_block_types", format!("{other:?} is not supported (UpBlock2D, CrossAttnUpBlock2D)"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_block_type = match mid_name.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => Some(MidBlockType::UNetMidBlock2DCrossAttn),
            Some(other) => {
                return Err(r.err("mid_block_type", format!("{other:?} is not supported (UNetMidBlock2DCrossAttn or null)")))
            }
        };

        let block_out_channels: Vec<usize> = r.get("block_out_channels", vec![320, 640, 1280, 1280])?;
        let n = down_block_types.len();
        if n == 0 {
            return Err(r.err("down_block_types", "is empty"));
        }
        if up_block_types.len() != n {
            return Err(r.err("up_block_types", format!("has {} entries for {n} down blocks", up_block_types.len())));
        }
        if block_out_channels.len() != n {
            return Err(r.err("block_out_channels", format!("has {} entries for {n} down blocks", block_out_channels.len())));
        }
        if block_out_channels.contains(&0) {
            return Err(r.err("block_out_channels", "contains 0"));
        }

        let layers_per_block = r.per_block("layers_per_block", r.get("layers_per_block", OneOrMany::One(2usize))?, n)?;
        let only_cross_attention: Vec<bool> = r
            .per_block("only_cross_attention", r.get("only_cross_attention", OneOrMany::One(Some(false)))?, n)?
            .into_iter()
            .map(|b| b.unwrap_or(false))
            .collect();
        let cross_attention_dim =
            r.per_block("cross_attention_dim", r.get("cross_attention_dim", OneOrMany::One(1280usize))?, n)?;
        let heads: Vec<Option<usize>> =
            r.per_block("attention_head_dim", r.get("attention_head_dim", OneOrMany::One(Some(8usize)))?, n)?;
        let mut num_attention_heads = Vec::with_capacity(n);
        for (i, h) in heads.iter().enumerate() {
            match *h {
                Some(h) if h > 0 && h <= block_out_channels[i] => num_attention_heads.push(h),
                Some(h) => {
                    return Err(r.err(
                        "attention_head_dim",
                        format!("block {i}: {h} heads for {} channels (this key is the number of heads)", block_out_channels[i]),
                    ))
                }
                None => return Err(r.err("attention_head_dim", format!("block {i}: null head count"))),
            }
        }

        let tlpb: OneOrMany<OneOrMany<usize>> = r.get("transformer_layers_per_block", OneOrMany::One(OneOrMany::One(1)))?;
        let tlpb: Vec<OneOrMany<usize>> = match tlpb {
            OneOrMany::One(x) => (0..n).map(|_| clone_oom(&x)).collect(),
            OneOrMany::Many(xs) if xs.len() == n => xs,
            OneOrMany::Many(xs) => {
                return Err(r.err("transformer_layers_per_block", format!("has {} entries for {n} down blocks", xs.len())))
            }
        };
        let reverse: Option<Vec<OneOrMany<usize>>> = r.get("reverse_transformer_layers_per_block", None)?;
        if reverse.is_none() && tlpb.iter().any(|x| matches!(x, OneOrMany::Many(_))) {
            return Err(r.err(
                "reverse_transformer_layers_per_block",
                "must be given when transformer_layers_per_block lists per-layer depths (diffusers' asymmetric UNet rule)",
            ));
        }
        let mid_transformer_layers = match tlpb.last() {
            Some(OneOrMany::One(d)) => *d,
            Some(OneOrMany::Many(v)) if !v.is_empty() => v[0],
            _ => return Err(r.err("transformer_layers_per_block", "gives the mid block no depth")),
        };
        let transformer_layers_per_block = tlpb
            .iter()
            .zip(&layers_per_block)
            .map(|(t, &l)| per_layer(&r, "transformer_layers_per_block", t, l))
            .collect::<Result<Vec<_>>>()?;
        let up_depths: Vec<OneOrMany<usize>> = match reverse {
            Some(v) if v.len() == n => v,
            Some(v) => {
                return Err(r.err("reverse_transformer_layers_per_block", format!("has {} entries for {n} up blocks", v.len())))
            }
            None => tlpb.iter().rev().map(clone_oom).collect(),
        };
        let up_transformer_layers_per_block = up_depths
            .iter()
            .zip(layers_per_block.iter().rev())
            .map(|(t, &l)| per_layer(&r, "reverse_transformer_layers_per_block", t, l + 1))
            .collect::<Result<Vec<_>>>()?;

        let norm_num_groups: Option<usize> = r.get("norm_num_groups", Some(32))?;
        let Some(norm_num_groups) = norm_num_groups.filter(|&g| g > 0) else {
            return Err(r.err("norm_num_groups", "must be a positive group count (null builds no resnet in diffusers either)"));
        };
        for &c in &block_out_channels {
            if c % norm_num_groups != 0 {
                return Err(r.err("norm_num_groups", format!("{norm_num_groups} groups do not divide {c} channels")));
            }
        }

        let time_embedding_dim: Option<usize> = r.get("time_embedding_dim", None)?;
        let time_embed_dim = time_embedding_dim.unwrap_or(4 * block_out_channels[0]);

        let addition: Option<String> = r.get("addition_embed_type", None)?;
        let addition_embed = match addition.as_deref() {
            None => None,
            Some("text_time") => {
                let addition_time_embed_dim: Option<usize> = r.get("addition_time_embed_dim", None)?;
                let proj: Option<usize> = r.get("projection_class_embeddings_input_dim", None)?;
                let Some(addition_time_embed_dim) = addition_time_embed_dim else {
                    return Err(r.err("addition_time_embed_dim", "is required by addition_embed_type \"text_time\""));
                };
                let Some(projection_class_embeddings_input_dim) = proj else {
                    return Err(r.err("projection_class_embeddings_input_dim", "is required by addition_embed_type \"text_time\""));
                };
                Some(TextTimeEmbedConfig { addition_time_embed_dim, projection_class_embeddings_input_dim })
            }
            Some(other) => {
                return Err(r.err("addition_embed_type", format!("{other:?} is not supported (null or \"text_time\")")))
            }
        };

        let encoder_hid_dim: Option<usize> = r.get("encoder_hid_dim", None)?;
        let encoder_hid_dim_type: Option<String> = r.get("encoder_hid_dim_type", None)?;
        match (encoder_hid_dim, encoder_hid_dim_type.as_deref()) {
            (_, None) | (Some(_), Some("text_proj")) => {}
            (None, Some(_)) => return Err(r.err("encoder_hid_dim", "must be set when encoder_hid_dim_type is")),
            (Some(_), Some(other)) => {
                return Err(r.err("encoder_hid_dim_type", format!("{other:?} is not supported (null or \"text_proj\")")))
            }
        }
        if encoder_hid_dim.is_some() && cross_attention_dim.iter().any(|&d| d != cross_attention_dim[0]) {
            return Err(r.err("encoder_hid_dim", "needs a single cross_attention_dim to project to"));
        }

        let conv_in_kernel = r.get("conv_in_kernel", 3usize)?;
        let conv_out_kernel = r.get("conv_out_kernel", 3usize)?;
        for (key, k) in [("conv_in_kernel", conv_in_kernel), ("conv_out_kernel", conv_out_kernel)] {
            if k % 2 == 0 {
                return Err(r.err(key, format!("{k}: only odd kernels keep the latent size")));
            }
        }

        let sample_size = match r.get::<Option<OneOrMany<usize>>>("sample_size", None)? {
            None => None,
            Some(OneOrMany::One(s)) => Some((s, s)),
            Some(OneOrMany::Many(v)) if v.len() == 2 => Some((v[0], v[1])),
            Some(OneOrMany::Many(v)) => return Err(r.err("sample_size", format!("expected an int or [h, w], got {} values", v.len()))),
        };

        Ok(UNetConfig {
            in_channels: r.get("in_channels", 4)?,
            out_channels: r.get("out_channels", 4)?,
            sample_size,
            center_input_sample: r.flag("center_input_sample", false)?,
            flip_sin_to_cos: r.flag("flip_sin_to_cos", true)?,
            freq_shift: r.get("freq_shift", 0.0)?,
            down_block_types,
            mid_block_type,
            up_block_types,
            block_out_channels,
            layers_per_block,
            only_cross_attention,
            num_attention_heads,
            cross_attention_dim,
            transformer_layers_per_block,
            up_transformer_layers_per_block,
            mid_transformer_layers,
            downsample_padding: r.get("downsample_padding", 1)?,
            mid_block_scale_factor: r.get("mid_block_scale_factor", 1.0)?,
            norm_num_groups,
            norm_eps: r.get("norm_eps", 1e-5)?,
            use_linear_projection: r.flag("use_linear_projection", false)?,
            upcast_attention: r.flag("upcast_attention", false)?,
            time_embed_dim,
            time_embedding_act_fn: activation(&r, "time_embedding_act_fn", r.get("time_embedding_act_fn", None)?)?,
            timestep_post_act: activation(&r, "timestep_post_act", r.get("timestep_post_act", None)?)?,
            time_cond_proj_dim: r.get("time_cond_proj_dim", None)?,
            addition_embed,
            encoder_hid_dim,
            conv_in_kernel,
            conv_out_kernel,
        })
    }

    /// How many times the up path doubles the resolution (diffusers
    /// `num_upsamplers`): every up block but the last upsamples.
    pub fn num_upsamplers(&self) -> usize {
        self.up_block_types.len().saturating_sub(1)
    }
}

fn clone_oom(x: &OneOrMany<usize>) -> OneOrMany<usize> {
    match x {
        OneOrMany::One(n) => OneOrMany::One(*n),
        OneOrMany::Many(v) => OneOrMany::Many(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<UNetConfig> {
        UNetConfig::from_json(json, "unet/config.json")
    }

    /// The key parts of stabilityai/stable-diffusion-xl-base-1.0 unet/config.json.
    const SDXL: &str = r#"{
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0",
        "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "attention_type": "default",
        "block_out_channels": [320, 640, 1280], "center_input_sample": false,
        "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
        "cross_attention_dim": 2048, "cross_attention_norm": null,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "dropout": 0.0, "dual_cross_attention": false, "encoder_hid_dim": null,
        "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
        "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
        "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
        "sample_size": 128, "time_cond_proj_dim": null, "time_embedding_act_fn": null,
        "time_embedding_dim": null, "time_embedding_type": "positional", "timestep_post_act": null,
        "reverse_transformer_layers_per_block": null, "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": null, "use_linear_projection": true
    }"#;

    #[test]
    fn absent_keys_take_diffusers_defaults() {
        // The defaults are SD 1.x's UNet.
        let c = parse("{}").unwrap();
        assert_eq!(c.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(c.down_block_types[3], DownBlockType::DownBlock2D);
        assert_eq!(c.up_block_types[0], UpBlockType::UpBlock2D);
        assert_eq!(c.mid_block_type, Some(MidBlockType::UNetMidBlock2DCrossAttn));
        assert_eq!(c.num_attention_heads, vec![8; 4]);
        assert_eq!(c.cross_attention_dim, vec![1280; 4]);
        assert_eq!(c.layers_per_block, vec![2; 4]);
        assert_eq!(c.transformer_layers_per_block, vec![vec![1, 1]; 4]);
        assert_eq!(c.up_transformer_layers_per_block, vec![vec![1, 1, 1]; 4]);
        assert_eq!((c.norm_num_groups, c.norm_eps, c.time_embed_dim), (32, 1e-5, 1280));
        assert!(c.flip_sin_to_cos && !c.use_linear_projection && c.addition_embed.is_none());
        assert_eq!(c.num_upsamplers(), 3);
    }

    #[test]
    fn sdxl_config_resolves_per_block() {
        // SDXL base writes `"upcast_attention": null`, which diffusers reads as false.
        let c = parse(SDXL).unwrap();
        assert!(!c.upcast_attention);
        assert_eq!(c.num_attention_heads, vec![5, 10, 20]);
        assert_eq!(c.transformer_layers_per_block, vec![vec![1, 1], vec![2, 2], vec![10, 10]]);
        assert_eq!(c.up_transformer_layers_per_block, vec![vec![10; 3], vec![2; 3], vec![1; 3]]);
        assert_eq!(c.mid_transformer_layers, 10);
        assert_eq!(
            c.addition_embed,
            Some(TextTimeEmbedConfig { addition_time_embed_dim: 256, projection_class_embeddings_input_dim: 2816 })
        );
        assert_eq!(c.sample_size, Some((128, 128)));
    }

    #[test]
    fn nested_transformer_depths_need_and_use_the_reverse_list() {
        let base = r#""block_out_channels": [32, 64], "norm_num_groups": 8, "attention_head_dim": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "transformer_layers_per_block": [[1, 2], 3]"#;
        let err = parse(&format!("{{{base}}}")).unwrap_err().to_string();
        assert!(err.contains("reverse_transformer_layers_per_block"), "{err}");
        let c = parse(&format!(r#"{{{base}, "reverse_transformer_layers_per_block": [[3, 3, 4], [2, 1, 1]]}}"#)).unwrap();
        assert_eq!(c.transformer_layers_per_block, vec![vec![1, 2], vec![3, 3]]);
        assert_eq!(c.up_transformer_layers_per_block, vec![vec![3, 3, 4], vec![2, 1, 1]]);
        assert_eq!(c.mid_transformer_layers, 3);
    }

    #[test]
    fn unknown_keys_are_ignored_and_unsupported_values_name_their_key() {
        assert!(parse(r#"{"some_future_key": [1, 2], "_name_or_path": "x"}"#).is_ok());
        for (json, key) in [
            (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
            (r#"{"num_class_embeds": 10}"#, "num_class_embeds"),
            (r#"{"resnet_time_scale_shift": "scale_shift"}"#, "resnet_time_scale_shift"),
            (r#"{"dual_cross_attention": true}"#, "dual_cross_attention"),
            (r#"{"class_embeddings_concat": true}"#, "class_embeddings_concat"),
            (r#"{"in_channels": null}"#, "in_channels"),
            (r#"{"attention_type": "gated"}"#, "attention_type"),
            (r#"{"time_embedding_type": "fourier"}"#, "time_embedding_type"),
            (r#"{"addition_embed_type": "text"}"#, "addition_embed_type"),
            (r#"{"addition_embed_type": "text_time"}"#, "addition_time_embed_dim"),
            (r#"{"num_attention_heads": 8}"#, "num_attention_heads"),
            (r#"{"act_fn": "gelu"}"#, "act_fn"),
            (r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#, "mid_block_type"),
            (r#"{"down_block_types": ["AttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}"#, "down_block_types"),
            (r#"{"block_out_channels": [320, 640]}"#, "block_out_channels"),
            (r#"{"layers_per_block": [2, 2]}"#, "layers_per_block"),
            (r#"{"layers_per_block": "two"}"#, "layers_per_block"),
            (r#"{"norm_num_groups": null}"#, "norm_num_groups"),
            (r#"{"attention_head_dim": [8, 8, 8, 2000]}"#, "attention_head_dim"),
            (r#"{"encoder_hid_dim_type": "image_proj", "encoder_hid_dim": 8}"#, "encoder_hid_dim_type"),
            (r#"{"_class_name": "UNet2DModel"}"#, "_class_name"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{json}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains("unet/config.json"), "{json}: {msg}");
        }
    }

    #[test]
    fn lcm_and_optional_keys_are_read() {
        let c = parse(
            r#"{"time_cond_proj_dim": 256, "mid_block_type": null, "time_embedding_act_fn": "swish",
                "encoder_hid_dim": 1024, "freq_shift": 1, "sample_size": [64, 96], "layers_per_block": [1, 2, 2, 1]}"#,
        )
        .unwrap();
        assert_eq!(c.time_cond_proj_dim, Some(256));
        assert_eq!(c.mid_block_type, None);
        assert_eq!(c.time_embedding_act_fn, Some(Activation::Silu));
        assert_eq!(c.encoder_hid_dim, Some(1024));
        assert_eq!(c.freq_shift, 1.0);
        assert_eq!(c.sample_size, Some((64, 96)));
        assert_eq!(c.up_transformer_layers_per_block.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 3, 3, 2]);
    }
}
