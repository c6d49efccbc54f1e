"""Extra UNet parity fixtures for crates/psotune/tests/unet_parity.rs.

Tiny random-weight diffusers UNet2DConditionModel folders and golden
tensors for configurations the main fixtures (tools/make_fixtures.py) do not
cover:

- unet-sd15-lcm-tiny: SD 1.5-like (1x1 conv projections, int
  attention_head_dim = number of heads, three levels) with LCM's
  time_cond_proj_dim; cases with int64 timesteps, a single timestep broadcast
  to the batch, an odd 7x10 latent and a guidance-scale embedding.
- unet-layouts.json: the checkpoint layout (key count, parameter count and
  an FNV-1a hash of the sorted "key:shape" lines) of the full-size SD 1.5,
  SD 2.1 and SDXL UNets, built on torch's meta device, with their configs.
- unet-misc-tiny: options that change the graph: only_cross_attention,
  per-layer transformer depths with reverse_transformer_layers_per_block,
  no mid block, encoder_hid_dim ("text_proj"), time_embedding_act_fn,
  center_input_sample, freq_shift 1 with flip_sin_to_cos false, an odd 9x9
  latent.

Run with the dev venv (diffusers 0.42.1, torch):
    /work/venv/py/bin/python tools/make_unet_extra_fixtures.py
Writes fixtures/extra/<name>/{config.json,diffusion_pytorch_model.safetensors}
and fixtures/extra/<name>.golden.safetensors and fixtures/extra/unet-layouts.json (about 0.5 MB in all).
"""

import json
import os

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "extra")


def guidance_scale_embedding(w, embedding_dim):
    # diffusers LatentConsistencyModelPipeline.get_guidance_scale_embedding
    w = w * 1000.0
    half_dim = embedding_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -emb)
    emb = w.to(torch.float32)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def build(name, cfg):
    unet = UNet2DConditionModel(**cfg).eval()
    # Default init leaves norms at 1/0 and some layers near zero: perturb
    # every parameter so each one matters to the output.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(os.path.join(ROOT, name), safe_serialization=True)
    return unet


def run(unet, golden, case, sample, timesteps, ehs, **kw):
    with torch.no_grad():
        out = unet(sample, timesteps, ehs, **kw).sample
    golden[f"{case}.sample"] = sample
    golden[f"{case}.timesteps"] = timesteps
    golden[f"{case}.encoder_hidden_states"] = ehs
    golden[f"{case}.out"] = out


# Full-size configs (the non-default keys of the published unet/config.json).
LAYOUTS = {
    # runwayml/stable-diffusion-v1-5
    "sd15": dict(cross_attention_dim=768, sample_size=64),
    # stabilityai/stable-diffusion-2-1
    "sd21": dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                 upcast_attention=True, sample_size=96),
    # stabilityai/stable-diffusion-xl-base-1.0
    "sdxl": dict(addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
                 block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 projection_class_embeddings_input_dim=2816, transformer_layers_per_block=[1, 2, 10],
                 use_linear_projection=True, sample_size=128),
    # an LCM-distilled SD 1.5 (time_cond_proj_dim)
    "sd15-lcm": dict(cross_attention_dim=768, sample_size=64, time_cond_proj_dim=256),
}


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def layouts():
    out = {}
    for name, cfg in LAYOUTS.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**cfg)
        sd = unet.state_dict()
        lines = "".join(f"{k}:{','.join(str(d) for d in v.shape)}\n" for k, v in sorted(sd.items()))
        out[name] = dict(config=cfg, num_keys=len(sd), num_params=sum(v.numel() for v in sd.values()),
                         fnv1a64=f"{fnv1a64(lines.encode()):016x}")
    with open(os.path.join(ROOT, "unet-layouts.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def main():
    # One thread, fixed seed: a rerun rewrites byte-identical files.
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    os.makedirs(ROOT, exist_ok=True)

    name = "unet-sd15-lcm-tiny"
    unet = build(name, dict(
        sample_size=8, block_out_channels=[8, 8, 16], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=2, use_linear_projection=False, cross_attention_dim=8,
        norm_num_groups=4, time_cond_proj_dim=8,
    ))
    g = {}
    run(unet, g, "int_t", torch.randn(2, 4, 8, 8), torch.tensor([999, 3], dtype=torch.int64), torch.randn(2, 5, 8))
    run(unet, g, "odd", torch.randn(2, 4, 7, 10), torch.tensor([250.0]), torch.randn(2, 5, 8))
    w = torch.tensor([7.5, 1.0])
    cond = guidance_scale_embedding(w, 8)
    g["lcm.w"] = w
    g["lcm.timestep_cond"] = cond
    run(unet, g, "lcm", torch.randn(2, 4, 8, 8), torch.tensor([759.0, 499.0]), torch.randn(2, 5, 8), timestep_cond=cond)
    save_file({k: v.contiguous() for k, v in g.items()}, os.path.join(ROOT, f"{name}.golden.safetensors"))

    name = "unet-misc-tiny"
    unet = build(name, dict(
        sample_size=8, block_out_channels=[8, 8], layers_per_block=2,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        mid_block_type=None, only_cross_attention=[True, False],
        transformer_layers_per_block=[[1, 2], [2, 1]],
        reverse_transformer_layers_per_block=[[1, 1, 2], [2, 1, 1]],
        attention_head_dim=[2, 4], use_linear_projection=True, cross_attention_dim=8,
        encoder_hid_dim=12, time_embedding_act_fn="silu", center_input_sample=True,
        freq_shift=1, flip_sin_to_cos=False, norm_num_groups=4,
    ))
    g = {}
    run(unet, g, "odd", torch.rand(2, 4, 9, 9), torch.tensor([10.0, 600.5]), torch.randn(2, 3, 12))
    save_file({k: v.contiguous() for k, v in g.items()}, os.path.join(ROOT, f"{name}.golden.safetensors"))

    layouts()


if __name__ == "__main__":
    main()
