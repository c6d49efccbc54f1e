#!/usr/bin/env python3
"""LoRA interop fixtures: diffusers/peft load psotune's LoRA exports, and make one for psotune.

Dev-side only; the outputs are committed under fixtures/lora/ so the Rust tests
never need Python. Run after `PSOTUNE_WRITE_LORA_FIXTURES=1 cargo test -p psotune
--test lora_parity` has (re)written psotune's exports:

    /work/venv/py/bin/python tools/make_lora_fixtures.py

For each tiny pipeline (fixtures/sd21-tiny, fixtures/sdxl-tiny):
  1. `pipe.load_lora_weights` on psotune's `{model}.peft.safetensors` (diffusers /
     PEFT keys + `lora_adapter_metadata`) and `{model}.kohya.safetensors` (kohya
     keys: diffusers module names for SD, LDM names for SDXL), then the UNet output
     on the golden inputs (fixtures/golden/{model}.safetensors) -> `{model}.{fmt}.out`.
     Every adapter in the file must land on a module (no "lora key not loaded").
  2. A LoRA made with peft (`unet.add_adapter`: attention projections and resnet
     conv1 / conv_shortcut convolutions, r=2 with conv1 at r=4 via rank_pattern,
     lora_alpha=4 with to_k at alpha 1 via alpha_pattern, seeded non-zero lora_B),
     written by `save_lora_weights` as `{model}.diffusers-made.safetensors`, and its
     UNet output -> `{model}.diffusers-made.out`.
  3. The SD 1.5-like UNet of fixtures/extra (1x1-conv projections, three levels)
     with psotune's `sd15-tiny.{peft,kohya}.safetensors`, on its `lcm` golden case.
All outputs go to fixtures/lora/outputs.safetensors (f32, one CPU thread).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
OUT = FIXTURES / "lora"
MODELS = [("sd21-tiny", False), ("sdxl-tiny", True)]


def unet_out(pipe, g: dict, sdxl: bool) -> torch.Tensor:
    kwargs = {}
    if sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": g["unet.text_embeds"], "time_ids": g["unet.time_ids"]}
    with torch.no_grad():
        return pipe.unet(g["unet.sample"], g["unet.timesteps"], g["unet.encoder_hidden_states"], **kwargs).sample



def count_file_modules(path: Path) -> int:
    keys = load_file(path).keys()
    return sum(1 for k in keys if k.endswith((".lora_A.weight", ".lora_down.weight")))


def sd15_exports(outputs: dict[str, torch.Tensor]) -> None:
    """The SD 1.5-like extra UNet (1x1-conv projections, LCM timestep_cond): no
    pipeline folder, so load through the pipeline class's LoRA entry points."""
    unet_dir = FIXTURES / "extra" / "unet-sd15-lcm-tiny"
    g = load_file(FIXTURES / "extra" / "unet-sd15-lcm-tiny.golden.safetensors")
    for fmt in ["peft", "kohya"]:
        unet = UNet2DConditionModel.from_pretrained(unet_dir, dtype=torch.float32)
        path = OUT / f"sd15-tiny.{fmt}.safetensors"
        state_dict, alphas, metadata = StableDiffusionPipeline.lora_state_dict(str(path), return_lora_metadata=True)
        StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet, adapter_name=fmt, metadata=metadata)
        loaded = sum(1 for _, m in unet.named_modules() if hasattr(m, "lora_A") and fmt in m.lora_A)
        want = count_file_modules(path)
        if loaded != want:
            raise SystemExit(f"{path.name}: diffusers attached {loaded} of {want} adapters")
        with torch.no_grad():
            out = unet(g["lcm.sample"], g["lcm.timesteps"], g["lcm.encoder_hidden_states"], timestep_cond=g["lcm.timestep_cond"]).sample
        outputs[f"sd15-tiny.{fmt}.out"] = out.contiguous()
        print(f"sd15-tiny {fmt}: {loaded} adapters")


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    outputs: dict[str, torch.Tensor] = {}
    for name, sdxl in MODELS:
        pipe = DiffusionPipeline.from_pretrained(FIXTURES / name, dtype=torch.float32)
        g = load_file(FIXTURES / "golden" / f"{name}.safetensors")
        base = unet_out(pipe, g, sdxl)
        for fmt in ["peft", "kohya"]:
            path = OUT / f"{name}.{fmt}.safetensors"
            pipe.load_lora_weights(str(path), adapter_name=fmt)
            loaded = sum(1 for _, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and fmt in m.lora_A)
            want = count_file_modules(path)
            if loaded != want:
                raise SystemExit(f"{path.name}: diffusers attached {loaded} of {want} adapters")
            out = unet_out(pipe, g, sdxl)
            outputs[f"{name}.{fmt}.out"] = out.contiguous()
            print(f"{name} {fmt}: {loaded} adapters, output moved by {(out - base).abs().max().item():.3e}")
            pipe.delete_adapters(fmt)

        # A LoRA made by peft, saved the way diffusers' training scripts do.
        torch.manual_seed(0)
        config = LoraConfig(
            r=2,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv_shortcut"],
            rank_pattern={"conv1": 4},
            alpha_pattern={"to_k": 1},
        )
        pipe.unet.add_adapter(config)
        with torch.no_grad():
            for _, m in pipe.unet.named_modules():
                if hasattr(m, "lora_B") and "default" in m.lora_B:
                    m.lora_B["default"].weight.normal_(0.0, 0.05)
                    # Stored in f16 to keep fixtures/ small: round the live
                    # weights the same way so the output matches the file.
                    for w in (m.lora_A["default"].weight, m.lora_B["default"].weight):
                        w.copy_(w.half().float())
        path = OUT / f"{name}.diffusers-made.safetensors"
        layers = {k: v.half() for k, v in get_peft_model_state_dict(pipe.unet).items()}
        meta = pipe.unet.peft_config["default"].to_dict()
        pipe.save_lora_weights(OUT, unet_lora_layers=layers, unet_lora_adapter_metadata=meta, weight_name=path.name)
        out = unet_out(pipe, g, sdxl)
        outputs[f"{name}.diffusers-made.out"] = out.contiguous()
        print(f"{name} diffusers-made: {count_file_modules(path)} adapters, output moved by {(out - base).abs().max().item():.3e}")
    sd15_exports(outputs)
    save_file(outputs, OUT / "outputs.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
