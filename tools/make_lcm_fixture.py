#!/usr/bin/env python3
"""Build fixtures/lcm-tiny, a tiny LatentConsistencyModelPipeline whose UNet has
a guidance embedding (`time_cond_proj_dim`, as the full LCM-SD1.5 and LCM-SDXL
UNets), and its goldens: what diffusers samples in 4 steps with it.

Dev-side only (the outputs are committed). It reuses fixtures/sd21-tiny's text
encoder, tokenizer and VAE, so run tools/make_fixtures.py first when those change.

    tools/setup_venv.sh && .venv/bin/python tools/make_lcm_fixture.py           # (re)build
    .venv/bin/python tools/make_lcm_fixture.py --check                          # verify

fixtures/golden/lcm-tiny.safetensors holds, for PROMPTS[0]:
  sample.init_latents          [1,4,8,8]  unit-variance initial noise
  unet.sample/unet.timesteps/unet.w/unet.out   a direct UNet call with
                               timestep_cond = the embedding of w (batch 2)
  sample.{case}.latents        [1,4,8,8]  final latents (output_type="latent")
  sample.{case}.image          [1,3,16,16] output_type="pt"
  sample.{case}.timesteps      [4] f32
  sample.{case}.noise.{k}      the k-th noise LCMScheduler drew (3 for 4 steps)
with cases g8.5 (the pipeline's default guidance) and g2 (guidance_scale 2.0);
golden/lcm-tiny.json lists the cases and the scheduler config.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (shared helpers: seeded, recorded_noise, setup_torch)

NAME = "lcm-tiny"
FOLDER = mf.FIXTURES / NAME
SEED = {"unet": 21, "inputs": 300}
TIME_COND_PROJ_DIM = 8
# The scheduler config LCM-distilled SD models ship with (LCM_Dreamshaper_v7's
# scheduler_config.json: leading spacing over 50 original steps).
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": True,
    "original_inference_steps": 50,
    "timestep_scaling": 10.0,
}
CASES = {"g8.5": 8.5, "g2": 2.0}


def build():
    from diffusers import AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    src = mf.FIXTURES / "sd21-tiny"
    unet = mf.seeded(SEED["unet"], lambda: UNet2DConditionModel(**mf.sd21_unet_config(time_cond_proj_dim=TIME_COND_PROJ_DIM)))
    return LatentConsistencyModelPipeline(
        vae=AutoencoderKL.from_pretrained(src / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(src / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(src / "tokenizer"),
        unet=unet,
        scheduler=LCMScheduler.from_config(SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def goldens(pipe):
    g = torch.Generator().manual_seed(SEED["inputs"])
    t: dict[str, torch.Tensor] = {}
    # A direct UNet call: two samples, two timesteps, two guidance scales.
    t["unet.sample"] = torch.randn((2, 4, 8, 8), generator=g)
    t["unet.timesteps"] = torch.tensor([999.0, 259.0])
    t["unet.w"] = torch.tensor([7.5, 0.0])
    ids = mf.tokenize(pipe.tokenizer, mf.PROMPTS)
    hidden = pipe.text_encoder(ids)[0]
    cond = pipe.get_guidance_scale_embedding(t["unet.w"], embedding_dim=TIME_COND_PROJ_DIM)
    t["unet.out"] = pipe.unet(t["unet.sample"], t["unet.timesteps"], hidden, timestep_cond=cond).sample

    pipe.set_progress_bar_config(disable=True)
    init = torch.randn((1, 4, 8, 8), generator=g)
    t["sample.init_latents"] = init
    info = {}
    for i, (case, scale) in enumerate(CASES.items()):
        out = {}
        for output_type in ("latent", "pt"):
            pipe.scheduler = type(pipe.scheduler).from_config(SCHEDULER)
            record: list[torch.Tensor] = []
            with mf.recorded_noise(SEED["inputs"] + 10 * (i + 1), record):
                out[output_type] = pipe(
                    mf.PROMPTS[0],
                    height=mf.IMAGE_SIZE,
                    width=mf.IMAGE_SIZE,
                    num_inference_steps=4,
                    guidance_scale=scale,
                    latents=init.clone(),
                    output_type=output_type,
                    return_dict=False,
                )[0]
            out[f"noise.{output_type}"] = record
        assert all(torch.equal(a, b) for a, b in zip(out["noise.latent"], out["noise.pt"]))
        t[f"sample.{case}.latents"] = out["latent"]
        t[f"sample.{case}.image"] = out["pt"]
        t[f"sample.{case}.timesteps"] = pipe.scheduler.timesteps.to(torch.float32)
        for k, noise in enumerate(out["noise.latent"]):
            t[f"sample.{case}.noise.{k}"] = noise
        info[case] = {
            "guidance_scale": scale,
            "prompt": mf.PROMPTS[0],
            "num_inference_steps": 4,
            "timesteps": [int(x) for x in pipe.scheduler.timesteps.tolist()],
            "noise_draws": len(out["noise.latent"]),
        }
    meta = {"scheduler_config": SCHEDULER, "time_cond_proj_dim": TIME_COND_PROJ_DIM, "cases": info}
    return {k: v.detach().clone().contiguous() for k, v in t.items()}, meta


def generate() -> None:
    from diffusers import LatentConsistencyModelPipeline
    from safetensors.torch import save_file

    if FOLDER.exists():
        shutil.rmtree(FOLDER)
    build().save_pretrained(FOLDER, safe_serialization=True)
    pipe = LatentConsistencyModelPipeline.from_pretrained(FOLDER, safety_checker=None)
    tensors, meta = goldens(pipe)
    save_file(tensors, str(mf.GOLDEN / f"{NAME}.safetensors"), metadata=mf.golden_metadata(NAME))
    mf.write_json(mf.GOLDEN / f"{NAME}.json", meta)
    print(f"{NAME}: {len(tensors)} golden tensors")
    for case in CASES:
        print(f"  sample.{case}.latents {mf.stats(tensors[f'sample.{case}.latents'])}")


def check() -> int:
    from diffusers import LatentConsistencyModelPipeline
    from safetensors.torch import load_file

    pipe = LatentConsistencyModelPipeline.from_pretrained(FOLDER, safety_checker=None)
    tensors, meta = goldens(pipe)
    golden = load_file(str(mf.GOLDEN / f"{NAME}.safetensors"))
    failures = 0
    if json.loads((mf.GOLDEN / f"{NAME}.json").read_text()) != json.loads(json.dumps(meta)):
        print(f"FAIL {NAME}: {NAME}.json differs from a recomputation")
        failures += 1
    if set(golden) != set(tensors):
        print(f"FAIL {NAME}: tensor names differ: {sorted(set(golden) ^ set(tensors))}")
        failures += 1
    for key in sorted(set(golden) & set(tensors)):
        a, b = golden[key].double(), tensors[key].double()
        scale = 1.0 + a.abs().max().item()
        if a.shape != b.shape or (a - b).abs().max().item() > 1e-5 * scale:
            print(f"FAIL {NAME}:{key}")
            failures += 1
    print("all lcm-tiny goldens reproduce" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="recompute the goldens and compare")
    args = parser.parse_args()
    mf.setup_torch()
    return check() if args.check else generate()


if __name__ == "__main__":
    sys.exit(main())
