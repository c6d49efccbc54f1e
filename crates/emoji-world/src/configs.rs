//! The diffusers configs of the emoji model: the same component classes
//! as Stable Diffusion, shrunk for 32x32 images on a 2-core CPU. Every
//! number here is a design choice of this miniature, not an upstream preset.

use serde_json::{json, Value};

/// Image side in pixels (the dataset is rendered at this size).
pub const IMAGE_SIZE: usize = 32;
/// Latent side: the VAE halves the side twice (f = 4, as LDM's KL-f4).
pub const LATENT_SIZE: usize = 8;
pub const LATENT_CHANNELS: usize = 4;
/// Text encoder width = the UNet's cross-attention dim.
pub const TEXT_DIM: usize = 128;
/// Tokens per prompt (captions are at most ~20 BPE tokens).
pub const MAX_TOKENS: usize = 32;
/// BPE merges kept from CLIP's 48,894 (see tokenizer.rs).
pub const BPE_MERGES: usize = 8000;
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// AutoencoderKL, 32x32x3 <-> 8x8x4. `scaling_factor` is measured after
/// training (1 / std of the latents), as SD's 0.18215 was.
pub fn vae(scaling_factor: f64) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 16,
        "sample_size": IMAGE_SIZE,
        "scaling_factor": scaling_factor,
        "force_upcast": false
    })
}

/// CLIPTextModel, 4 layers of width 128 (GELU, as SD 2.x's OpenCLIP encoder).
pub fn text_encoder(vocab_size: usize) -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": TEXT_DIM,
        "intermediate_size": 4 * TEXT_DIM,
        "projection_dim": TEXT_DIM,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_TOKENS,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
        "torch_dtype": "float32"
    })
}

/// UNet2DConditionModel on 8x8x4 latents: three levels (8, 4, 2) with
/// cross-attention at the first two, SD's block types and epsilon target.
/// `attention_head_dim` is diffusers' historical name for the head count.
pub fn unet() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": LATENT_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "center_input_sample": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "only_cross_attention": false,
        "block_out_channels": [48, 96, 192],
        "layers_per_block": 1,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 16,
        "norm_eps": 1e-5,
        "cross_attention_dim": TEXT_DIM,
        "attention_head_dim": [2, 4, 6],
        "use_linear_projection": true,
        "upcast_attention": false
    })
}

/// SD's `scaled_linear` training schedule, as every distilled model of
/// pso.md §1 uses.
fn schedule() -> Value {
    json!({
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": false,
        "set_alpha_to_one": true,
        "steps_offset": 1
    })
}

/// The teacher samples with DDIM; the student with LCM (4 steps from the
/// 50-step distillation grid).
pub fn scheduler(student: bool) -> Value {
    let mut s = schedule();
    let obj = s.as_object_mut().expect("object literal");
    if student {
        obj.insert("_class_name".into(), "LCMScheduler".into());
        obj.insert("original_inference_steps".into(), 50.into());
        obj.insert("timestep_scaling".into(), 10.0.into());
        obj.insert("timestep_spacing".into(), "leading".into());
    } else {
        obj.insert("_class_name".into(), "DDIMScheduler".into());
        obj.insert("timestep_spacing".into(), "leading".into());
    }
    obj.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
    s
}

/// `model_index.json` of a StableDiffusionPipeline folder, with psotune's
/// sampling defaults (pipeline/defaults.rs reads `_psotune.sampling`).
pub fn model_index(student: bool) -> Value {
    let sampling = if student {
        json!({ "sampler": "lcm", "steps": 4, "guidance": 0.0 })
    } else {
        json!({ "sampler": "ddim", "steps": 25, "guidance": 3.0 })
    };
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", if student { "LCMScheduler" } else { "DDIMScheduler" }],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "_psotune": { "sampling": sampling }
    })
}
