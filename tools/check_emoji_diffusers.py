#!/usr/bin/env python3
"""Check that diffusers loads the built-in model (models/emoji) and draws
what psotune draws.

    tools/check_emoji_diffusers.py [MODEL_DIR] [--psotune target/release/psotune]

diffusers' StableDiffusionPipeline loads the folder as it is (float16 files
read into float32) with its LCMScheduler; a 1-step sample (no noise is
injected at the last step, so both tools are deterministic given the initial
latents) from the same latents must match psotune's within 2/255 per pixel.
Dev-side only (the product never needs Python); exits non-zero on failure.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

PROMPTS = ["an emoji of a grinning face", "an emoji of a red apple"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="models/emoji")
    ap.add_argument("--psotune", default="target/release/psotune")
    args = ap.parse_args()

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, safety_checker=None)
    print(f"diffusers loaded {args.model}: {type(pipe.scheduler).__name__}, "
          f"unet {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M parameters")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, prompt in enumerate(PROMPTS):
            g = torch.Generator().manual_seed(i)
            latents = torch.randn((1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size), generator=g)
            ours_dir = os.path.join(tmp, f"p{i}")
            lat_file = os.path.join(tmp, f"latents{i}.safetensors")
            save_file({"latents": latents.contiguous()}, lat_file)
            theirs = pipe(prompt, num_inference_steps=1, guidance_scale=0.0, latents=latents.clone(),
                          height=size, width=size, output_type="np").images[0]
            subprocess.run([args.psotune, "sample", "--model", args.model, "--prompt", prompt, "--steps", "1",
                            "--init-latents", lat_file, "--out", ours_dir], check=True, stdout=subprocess.DEVNULL)
            ours = np.asarray(Image.open(os.path.join(ours_dir, "000-seed0.png")).convert("RGB"), dtype=np.float32) / 255.0
            diff = float(np.abs(ours - np.round(theirs * 255.0) / 255.0).max())
            worst = max(worst, diff)
            print(f"{prompt!r}: max |psotune - diffusers| = {diff * 255:.1f}/255")
    if worst > 2.0 / 255.0:
        print("FAILED: psotune and diffusers disagree", file=sys.stderr)
        return 1
    print("ok: diffusers loads the folder and agrees with psotune")
    return 0


if __name__ == "__main__":
    sys.exit(main())
