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

Text-encoder LoRA (crates/psotune/tests/te_lora_parity.rs writes psotune's
`{model}.te.{peft,kohya}.safetensors` first):
  4. `pipe.load_lora_weights` on each (UNet attention + text encoder(s)
     attention and MLP), then `encode_prompt` on fixtures/golden/prompts.json
     -> `{model}.te.{fmt}.hidden` (SDXL also `.pooled`) and the UNet output on
     the golden inputs -> `.out`.
  5. A LoRA peft made on the UNet and the text encoder(s) (`add_adapter`,
     alpha_pattern on v_proj), saved by `save_lora_weights` as
     `{model}.te.diffusers-made.safetensors`, with the same outputs.
These go to fixtures/lora/te_outputs.safetensors (`--te-only`: only steps 4-5).

transformers 5.24 refuses text-encoder adapters unless peft >= 0.22, which
is not released (0.21.2 is the newest); its `check_peft_version` is patched
out here, so diffusers' own loading code runs on peft 0.21.2.
"""

from __future__ import annotations

import json
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


def te_outputs(pipe, name: str, g: dict, sdxl: bool) -> dict[str, torch.Tensor]:
    prompts = json.loads((FIXTURES / "golden" / "prompts.json").read_text())
    with torch.no_grad():
        enc = pipe.encode_prompt(prompt=prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    out = {"hidden": enc[0].contiguous(), "out": unet_out(pipe, g, sdxl).contiguous()}
    if sdxl:
        out["pooled"] = enc[2].contiguous()
    return out


def te_adapters(pipe, adapter: str) -> int:
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) is not None else [])
    return sum(1 for te in encoders for _, m in te.named_modules() if hasattr(m, "lora_A") and adapter in m.lora_A)


def te_fixtures() -> None:
    import transformers.integrations.peft as tpeft

    tpeft.check_peft_version = lambda *a, **k: None  # see the module note
    outputs: dict[str, torch.Tensor] = {}
    for name, sdxl in MODELS:
        g = load_file(FIXTURES / "golden" / f"{name}.safetensors")
        for fmt in ["peft", "kohya"]:
            pipe = DiffusionPipeline.from_pretrained(FIXTURES / name, dtype=torch.float32)
            path = OUT / f"{name}.te.{fmt}.safetensors"
            pipe.load_lora_weights(str(path), adapter_name=fmt)
            unet = sum(1 for _, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and fmt in m.lora_A)
            te = te_adapters(pipe, fmt)
            want = count_file_modules(path)
            if unet + te != want:
                raise SystemExit(f"{path.name}: diffusers attached {unet} + {te} of {want} adapters")
            for k, v in te_outputs(pipe, name, g, sdxl).items():
                outputs[f"{name}.te.{fmt}.{k}"] = v
            print(f"{name} te {fmt}: {unet} UNet + {te} text-encoder adapters")

        pipe = DiffusionPipeline.from_pretrained(FIXTURES / name, dtype=torch.float32)
        torch.manual_seed(1)
        te_config = LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian",
                               target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"], alpha_pattern={"v_proj": 1})
        unet_config = LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        encoders = {"text_encoder": pipe.text_encoder}
        if sdxl:
            encoders["text_encoder_2"] = pipe.text_encoder_2
        pipe.unet.add_adapter(unet_config)
        for te in encoders.values():
            te.add_adapter(te_config)
        with torch.no_grad():
            for model in [pipe.unet, *encoders.values()]:
                for _, m in model.named_modules():
                    if hasattr(m, "lora_B") and "default" in m.lora_B:
                        m.lora_B["default"].weight.normal_(0.0, 0.05)
                        for w in (m.lora_A["default"].weight, m.lora_B["default"].weight):
                            w.copy_(w.half().float())
        path = OUT / f"{name}.te.diffusers-made.safetensors"
        kwargs = {
            "unet_lora_layers": {k: v.half() for k, v in get_peft_model_state_dict(pipe.unet).items()},
            "unet_lora_adapter_metadata": pipe.unet.peft_config["default"].to_dict(),
        }
        for comp, te in encoders.items():
            kwargs[f"{comp}_lora_layers"] = {k: v.half() for k, v in get_peft_model_state_dict(te).items()}
            kwargs[f"{comp}_lora_adapter_metadata"] = te.peft_config["default"].to_dict()
        pipe.save_lora_weights(OUT, weight_name=path.name, **kwargs)
        for k, v in te_outputs(pipe, name, g, sdxl).items():
            outputs[f"{name}.te.diffusers-made.{k}"] = v
        print(f"{name} te diffusers-made: {count_file_modules(path)} adapters")
    save_file(outputs, OUT / "te_outputs.safetensors")


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if "--te-only" in sys.argv:  # only steps 4-5
        te_fixtures()
        return 0
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
    te_fixtures()
    return 0


if __name__ == "__main__":
    sys.exit(main())
