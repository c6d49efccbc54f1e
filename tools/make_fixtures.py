#!/usr/bin/env python3
"""Build psotune's tiny random-weight diffusers pipelines and their golden tensors.

Dev-side only: the outputs are committed under fixtures/, so the Rust tests never
need Python. Rerunning rewrites byte-identical files (fixed seeds, one CPU thread).

    tools/setup_venv.sh && .venv/bin/python tools/make_fixtures.py          # (re)build
    .venv/bin/python tools/make_fixtures.py --check                          # verify

What is built (see tools/README.md for the tensor list):
  fixtures/sd21-tiny/   StableDiffusionPipeline (SD 2.1 / SD-Turbo layout)
  fixtures/sdxl-tiny/   StableDiffusionXLPipeline (SDXL / SDXL-Turbo layout)
  fixtures/golden/{sd21-tiny,sdxl-tiny}.safetensors, prompts.json, sampling.json

The tokenizers are the real CLIP BPE (open_clip's bpe_simple_vocab_16e6.txt.gz)
truncated to its first BPE_MERGES merges, so the fixtures stay small but every
tokenizer code path (byte fallback, partial merges, </w>, specials) is exercised.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
GOLDEN = FIXTURES / "golden"

PROMPTS = ["a photo of a dog", "an emoji of a smiling cat, 2 apples!"]
# Number of BPE merges kept from the real CLIP list (CLIP itself keeps 48894).
BPE_MERGES = 1000
MAX_LEN = 77
IMAGE_SIZE = 16  # pixels; the VAE downsamples 2x -> 8x8 latents

# open_clip ships the CLIP BPE list; pinned so the vocabulary never drifts.
OPEN_CLIP_REQ = "open-clip-torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# The SD-Turbo / SDXL-Turbo scheduler config. The extra keys (clip_sample,
# set_alpha_to_one, skip_prk_steps) are carried in the real Turbo configs (inherited
# from SD 2.1's PNDM config); they matter once the config is re-used by
# DDIMScheduler/LCMScheduler.from_config, as the sampling goldens do.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}

# Seeds: one per random thing, so adding a tensor never shifts the others.
SEED = {
    "sd21-tiny": {"text_encoder": 1, "unet": 2, "vae": 3, "inputs": 100},
    "sdxl-tiny": {"text_encoder": 11, "text_encoder_2": 12, "unet": 13, "vae": 14, "inputs": 200},
}
PERTURB_SEED_OFFSET = 1000


# --------------------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def cache_dir() -> Path:
    base = os.environ.get("PSOTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "psotune")
    return Path(base)


def find_bpe_file(explicit: str | None) -> bytes:
    """Return the bytes of bpe_simple_vocab_16e6.txt.gz.

    Looked up in order: --bpe PATH (the .txt.gz itself or an open_clip wheel), an
    installed open_clip package, a wheel in the cache, else `pip download` of the
    pinned open-clip-torch wheel (no dependencies) into the cache.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    else:
        try:
            import importlib.util

            spec = importlib.util.find_spec("open_clip")
            if spec and spec.origin:
                candidates.append(Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz")
        except (ImportError, ValueError):
            pass
        candidates.extend(sorted(cache_dir().glob("open_clip_torch-*.whl")))
    for path in candidates:
        data = read_bpe_candidate(path)
        if data is not None:
            return data
    if explicit:
        sys.exit(f"--bpe {explicit}: not a bpe_simple_vocab_16e6.txt.gz or an open_clip wheel with the pinned content")
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    print(f"downloading {OPEN_CLIP_REQ} (no deps) into {dest}", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", OPEN_CLIP_REQ, "--no-deps", "--only-binary=:all:", "-d", str(dest)],
        check=True,
    )
    for path in sorted(dest.glob("open_clip_torch-*.whl")):
        data = read_bpe_candidate(path)
        if data is not None:
            return data
    sys.exit("could not find bpe_simple_vocab_16e6.txt.gz; pass --bpe PATH")


def read_bpe_candidate(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            try:
                data = zf.read(BPE_MEMBER)
            except KeyError:
                return None
    else:
        data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != BPE_SHA256:
        print(f"warning: {path} is not the pinned CLIP BPE list (sha256 differs); ignored", file=sys.stderr)
        return None
    return data


def clip_vocab(bpe_gz: bytes, n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The standard CLIP vocabulary (openai/CLIP simple_tokenizer.py) with fewer merges:
    256 byte symbols, their `</w>` forms, one token per merge, then the two specials."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    assert all(len(m) == 2 for m in merges)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def make_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=MAX_LEN)


def rewrite_tokenizer_folder(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str):
    """Give a saved tokenizer folder the layout of the real SD / SDXL repositories:
    vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json.

    transformers 5 saves only tokenizer.json + tokenizer_config.json; the real
    checkpoints (and our Rust tokenizer) use vocab.json/merges.txt instead, and
    transformers loads those when tokenizer.json is absent (checked in --check)."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(vocab, ensure_ascii=False) + "\n")
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("".join(f"{a} {b}\n" for a, b in merges))
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    write_json(folder / "special_tokens_map.json", special)


# --------------------------------------------------------------------------- models


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter that the default init leaves constant off its constant.

    Norm gammas of exactly 1 and biases of exactly 0 would let a loader that
    swaps, drops or mis-maps them pass a parity test; zero-initialised output
    layers would make the test vacuous. Scales stay small so activations keep the
    magnitude of the default init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            is_norm = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            if is_norm and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif leaf == "bias":
                p.copy_((0.1 if is_norm else 0.05) * torch.randn(p.shape, generator=g))
            elif bool((p == p.flatten()[0]).all()) and p.numel() > 1:
                # A constant weight tensor (e.g. a zero-initialised projection).
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def seeded(seed: int, build):
    torch.manual_seed(seed)
    model = build()
    perturb_(model, seed + PERTURB_SEED_OFFSET)
    return model.eval()


def clip_text_config(hidden_act: str, projection_dim: int, vocab_size: int, intermediate: int):
    from transformers import CLIPTextConfig

    # bos 0 / eos 2 / pad 1 as in the real SD 2.1 and SDXL text encoder configs: eos 2
    # selects transformers' legacy pooling (argmax of input_ids = first <|endoftext|>).
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=intermediate,
        projection_dim=projection_dim,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def vae_model(scaling_factor: float, seed: int):
    from diffusers import AutoencoderKL

    return seeded(
        seed,
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            # Real SD VAEs use 2; one layer covers the same code paths at half the size.
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=IMAGE_SIZE,
            scaling_factor=scaling_factor,
        ),
    )


def scheduler():
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(SCHEDULER_CONFIG)


def sd21_unet_config(**extra):
    """The tiny SD 2.1-layout UNet's config (also the LCM fixture's, with extras)."""
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=32,
        norm_num_groups=8,
        **extra,
    )


def build_sd21(vocab, merges):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    s = SEED["sd21-tiny"]
    text_encoder = seeded(s["text_encoder"], lambda: CLIPTextModel(clip_text_config("gelu", 32, len(vocab), 37)))
    unet = seeded(s["unet"], lambda: UNet2DConditionModel(**sd21_unet_config()))
    return StableDiffusionPipeline(
        vae=vae_model(0.18215, s["vae"]),
        text_encoder=text_encoder,
        tokenizer=make_tokenizer(vocab, merges, "!"),
        unet=unet,
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(vocab, merges):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    s = SEED["sdxl-tiny"]
    text_encoder = seeded(
        s["text_encoder"], lambda: CLIPTextModel(clip_text_config("quick_gelu", 32, len(vocab), 37))
    )
    text_encoder_2 = seeded(
        s["text_encoder_2"], lambda: CLIPTextModelWithProjection(clip_text_config("gelu", 32, len(vocab), 48))
    )
    unet = seeded(
        s["unet"],
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            norm_num_groups=8,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
        ),
    )
    return StableDiffusionXLPipeline(
        vae=vae_model(0.13025, s["vae"]),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=make_tokenizer(vocab, merges, "<|endoftext|>"),
        tokenizer_2=make_tokenizer(vocab, merges, "!"),
        unet=unet,
        scheduler=scheduler(),
        add_watermarker=False,
    )


PIPELINES = {"sd21-tiny": build_sd21, "sdxl-tiny": build_sdxl}
TOKENIZERS = {"sd21-tiny": {"tokenizer": "!"}, "sdxl-tiny": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}}


def load_pipeline(name: str):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(FIXTURES / name, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- goldens


def tokenize(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids


def text_goldens(prefix: str, encoder, input_ids) -> dict[str, torch.Tensor]:
    out = encoder(input_ids, output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return {
        f"{prefix}.last_hidden_state": out.last_hidden_state,
        f"{prefix}.penultimate": out.hidden_states[-2],
        f"{prefix}.pooled": pooled,
    }


@contextlib.contextmanager
def recorded_noise(seed: int, record: list[torch.Tensor]):
    """Replace `randn_tensor` inside the scheduler modules by a seeded draw that is
    also recorded, so the Rust sampler can be fed the exact same noise in order."""
    import diffusers.schedulers.scheduling_ddim as ddim
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a
    import diffusers.schedulers.scheduling_lcm as lcm

    g = torch.Generator().manual_seed(seed)

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        noise = torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(dtype=dtype or torch.float32)
        record.append(noise.clone())
        return noise

    modules = [euler_a, lcm, ddim]
    saved = [m.randn_tensor for m in modules]
    for m in modules:
        m.randn_tensor = fake_randn
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m.randn_tensor = f


def sampling_cases(is_xl: bool):
    """(name, scheduler class name, config overrides, pipeline kwargs)."""
    common = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return [
        ("turbo1", "EulerAncestralDiscreteScheduler", {}, {**common, "num_inference_steps": 1, "guidance_scale": 0.0}),
        ("turbo4", "EulerAncestralDiscreteScheduler", {}, {**common, "num_inference_steps": 4, "guidance_scale": 0.0}),
        (
            "ddim4_cfg",
            "DDIMScheduler",
            {},
            {**common, "num_inference_steps": 4, "guidance_scale": 5.0, "negative_prompt": ""},
        ),
        ("lcm4", "LCMScheduler", {}, {**common, "num_inference_steps": 4, "guidance_scale": 0.0}),
        (
            "dmd2_4",
            "LCMScheduler",
            {},
            {**common, "timesteps": [999, 749, 499, 249], "guidance_scale": 0.0},
        ),
    ]


def sample_goldens(name: str, pipe, seed: int, init_latents: torch.Tensor):
    """End-to-end runs of the pipeline on PROMPTS[0] from `init_latents` (unit
    variance; the pipeline multiplies it by the scheduler's init_noise_sigma).

    Per case (see `sampling_cases`, and sampling.json for the resolved settings):
      sample.{case}.latents    [1,4,8,8]  final latents (output_type="latent")
      sample.{case}.image      [1,3,16,16] output_type="pt", in [0,1]
      sample.{case}.timesteps  [steps] f32 the scheduler's timesteps
      sample.{case}.noise.{k}  [1,4,8,8]  k-th noise the scheduler drew, in order
      sample.{case}.step.{k}   [1,4,8,8]  latents after step k
    Euler ancestral draws one noise per step (the last is multiplied by sigma_up = 0),
    LCM one per step but the last, DDIM (eta 0) none."""
    import diffusers

    is_xl = "text_encoder_2" in pipe.components
    base_config = dict(pipe.scheduler.config)
    tensors: dict[str, torch.Tensor] = {"sample.init_latents": init_latents}
    info = {}
    for i, (case, cls_name, overrides, kwargs) in enumerate(sampling_cases(is_xl)):
        cls = getattr(diffusers, cls_name)
        outputs = {}
        noises: dict[str, list[torch.Tensor]] = {}
        step_latents: dict[str, list[torch.Tensor]] = {}
        for output_type in ("latent", "pt"):
            # A fresh scheduler per run: schedulers keep a step index between calls.
            pipe.scheduler = cls.from_config({**base_config, **overrides})
            record: list[torch.Tensor] = []
            add_time_ids = []
            if is_xl:
                orig = pipe._get_add_time_ids

                def spy(*a, _orig=orig, **k):
                    ids = _orig(*a, **k)
                    add_time_ids.append(ids[0].tolist())
                    return ids

                pipe._get_add_time_ids = spy
            steps: list[torch.Tensor] = []

            def on_step_end(_pipe, _i, _t, cb_kwargs, _steps=steps):
                _steps.append(cb_kwargs["latents"].clone())
                return cb_kwargs

            with recorded_noise(seed + 10 * (i + 1), record):
                out = pipe(
                    PROMPTS[0],
                    latents=init_latents.clone(),
                    output_type=output_type,
                    return_dict=False,
                    callback_on_step_end=on_step_end,
                    **kwargs,
                )[0]
            step_latents[output_type] = steps
            if is_xl:
                del pipe._get_add_time_ids
            outputs[output_type] = out
            noises[output_type] = record
        # Both runs drew the same noise, so the image is the decoded latent of the first run.
        assert len(noises["latent"]) == len(noises["pt"])
        assert all(torch.equal(a, b) for a, b in zip(noises["latent"], noises["pt"]))
        timesteps = pipe.scheduler.timesteps
        tensors[f"sample.{case}.latents"] = outputs["latent"]
        tensors[f"sample.{case}.image"] = outputs["pt"]
        tensors[f"sample.{case}.timesteps"] = timesteps.to(torch.float32)
        for k, noise in enumerate(noises["latent"]):
            tensors[f"sample.{case}.noise.{k}"] = noise
        # Latents after each scheduler step (the last one equals `.latents`): lets a
        # failing sampler test say which step diverged.
        assert torch.equal(step_latents["latent"][-1], outputs["latent"])
        for k, latents in enumerate(step_latents["latent"]):
            tensors[f"sample.{case}.step.{k}"] = latents
        sched_config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
        entry = {
            "scheduler": cls_name,
            "config_overrides": overrides,
            "scheduler_config": sched_config,
            "pipeline_kwargs": kwargs,
            "prompt": PROMPTS[0],
            "num_inference_steps": len(timesteps),
            "timesteps": [float(t) if timesteps.is_floating_point() else int(t) for t in timesteps.tolist()],
            "guidance_scale": kwargs["guidance_scale"],
            "negative_prompt": kwargs.get("negative_prompt"),
            "init_noise_sigma": float(pipe.scheduler.init_noise_sigma),
            "noise_draws": len(noises["latent"]),
            "tensors": sorted(k for k in tensors if k.startswith(f"sample.{case}.")),
        }
        if is_xl:
            entry["add_time_ids"] = add_time_ids[0]
            # Without negative_original_size the pipeline re-uses add_time_ids for the
            # unconditional half of a CFG batch.
            cfg = kwargs["guidance_scale"] > 1.0
            entry["negative_add_time_ids"] = (add_time_ids[1] if len(add_time_ids) > 1 else add_time_ids[0]) if cfg else None
            entry["force_zeros_for_empty_prompt"] = bool(pipe.config.force_zeros_for_empty_prompt)
        info[case] = entry
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(base_config)
    return tensors, info


@torch.no_grad()
def compute_goldens(name: str, pipe):
    """Every golden tensor of one pipeline, all f32 except the i64 input ids.

      prompt.input_ids                [2,77] i64  tokenizer(PROMPTS), padded to 77
      text_encoder.last_hidden_state  [2,77,32]   after final_layer_norm
      text_encoder.penultimate        [2,77,32]   hidden_states[-2] (no final norm)
      text_encoder.pooled             [2,32]      pooler_output
      SDXL only: prompt.input_ids_2 and text_encoder_2.* (pooled = text_embeds, the
      projection output)
      unet.sample [2,4,8,8], unet.timesteps [2] = [999, 261]
      unet.encoder_hidden_states      SD2.1: text_encoder.last_hidden_state [2,77,32];
                                      SDXL: cat(penultimate, penultimate_2) [2,77,64]
      SDXL only: unet.text_embeds [2,32] (= text_encoder_2.pooled), unet.time_ids [2,6]
      unet.out                        [2,4,8,8]   UNet2DConditionModel(...).sample
      vae.image [1,3,16,16] in [-1,1]; vae.posterior_mean / vae.posterior_logvar
      [1,4,8,8] (logvar clamped to [-30, 20] as diffusers does); vae.decode_in
      [1,4,8,8] (an unscaled latent); vae.decoded [1,3,16,16]
      sample.*                        see `sample_goldens`
    """
    is_xl = name == "sdxl-tiny"
    seed = SEED[name]["inputs"]
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}

    # Text encoders, on the pipeline's own tokenizers.
    t["prompt.input_ids"] = tokenize(pipe.tokenizer, PROMPTS)
    t.update(text_goldens("text_encoder", pipe.text_encoder, t["prompt.input_ids"]))
    if is_xl:
        t["prompt.input_ids_2"] = tokenize(pipe.tokenizer_2, PROMPTS)
        t.update(text_goldens("text_encoder_2", pipe.text_encoder_2, t["prompt.input_ids_2"]))

    # UNet: batch 2 with different timesteps per sample, conditioned on the real
    # text-encoder outputs the pipeline would pass.
    t["unet.sample"] = torch.randn((2, 4, 8, 8), generator=g)
    t["unet.timesteps"] = torch.tensor([999.0, 261.0])
    added = None
    if is_xl:
        t["unet.encoder_hidden_states"] = torch.cat(
            [t["text_encoder.penultimate"], t["text_encoder_2.penultimate"]], dim=-1
        )
        t["unet.text_embeds"] = t["text_encoder_2.pooled"]
        # (orig_h, orig_w, crop_top, crop_left, target_h, target_w): one at the tiny
        # size, one at SDXL's real scale so large sinusoid arguments are covered.
        t["unet.time_ids"] = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0], [1024.0, 768.0, 32.0, 0.0, 512.0, 512.0]])
        added = {"text_embeds": t["unet.text_embeds"], "time_ids": t["unet.time_ids"]}
    else:
        t["unet.encoder_hidden_states"] = t["text_encoder.last_hidden_state"]
    t["unet.out"] = pipe.unet(
        t["unet.sample"], t["unet.timesteps"], t["unet.encoder_hidden_states"], added_cond_kwargs=added
    ).sample

    # VAE: a smooth pattern plus noise in [-1, 1].
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, IMAGE_SIZE), torch.linspace(-1, 1, IMAGE_SIZE), indexing="ij")
    base = torch.stack([torch.sin(3 * xx + 1), torch.cos(2 * yy - xx), xx * yy])[None]
    t["vae.image"] = (0.7 * base + 0.3 * torch.randn((1, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g)).clamp(-1, 1)
    dist = pipe.vae.encode(t["vae.image"]).latent_dist
    t["vae.posterior_mean"] = dist.mean
    t["vae.posterior_logvar"] = dist.logvar
    t["vae.decode_in"] = torch.randn((1, 4, 8, 8), generator=g)
    t["vae.decoded"] = pipe.vae.decode(t["vae.decode_in"]).sample

    # End-to-end sampling.
    init_latents = torch.randn((1, 4, 8, 8), generator=g)
    sample_t, sample_info = sample_goldens(name, pipe, seed, init_latents)
    t.update(sample_t)
    return {k: v.detach().clone().contiguous() for k, v in t.items()}, sample_info


# --------------------------------------------------------------------------- I/O


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def golden_metadata(name: str) -> dict[str, str]:
    import diffusers
    import transformers

    # A single key: safetensors writes metadata from a hash map, so with several keys
    # their order (and the file's bytes) would change from run to run.
    versions = f"torch {torch.__version__.split('+')[0]}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    return {"generator": f"tools/make_fixtures.py ({name}; {versions})"}


def stats(x: torch.Tensor) -> str:
    x = x.double()
    return f"mean {x.mean():+.3f} std {x.std():.3f} absmax {x.abs().max():.3f}"


def setup_torch() -> None:
    # One thread and deterministic kernels: reruns give byte-identical files.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import diffusers

    diffusers.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def generate(bpe: str | None) -> None:
    from safetensors.torch import save_file

    vocab, merges = clip_vocab(find_bpe_file(bpe), BPE_MERGES)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    write_json(GOLDEN / "prompts.json", PROMPTS)
    sampling = {}
    for name, build in PIPELINES.items():
        folder = FIXTURES / name
        if folder.exists():
            shutil.rmtree(folder)
        built = build(vocab, merges)
        built.save_pretrained(folder, safe_serialization=True)
        for sub, pad in TOKENIZERS[name].items():
            rewrite_tokenizer_folder(folder / sub, vocab, merges, pad)
        # Goldens come from the folder as diffusers loads it, not from memory.
        pipe = load_pipeline(name)
        for sub in TOKENIZERS[name]:
            ids_mem = tokenize(getattr(built, sub), PROMPTS)
            ids_disk = tokenize(getattr(pipe, sub), PROMPTS)
            assert torch.equal(ids_mem, ids_disk), f"{name}/{sub}: saved tokenizer differs from the built one"
        tensors, info = compute_goldens(name, pipe)
        sampling[name] = {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "cases": info}
        save_file(tensors, str(GOLDEN / f"{name}.safetensors"), metadata=golden_metadata(name))
        print(f"{name}: {len(tensors)} golden tensors")
        for k in ("text_encoder.last_hidden_state", "unet.out", "vae.posterior_mean", "vae.decoded"):
            print(f"  {k:32s} {stats(tensors[k])}")
        for case in info:
            print(f"  sample.{case}.image{'':14s} {stats(tensors[f'sample.{case}.image'])}")
    write_json(GOLDEN / "sampling.json", sampling)


def check() -> int:
    """Reload every fixture folder with diffusers and recompute every golden."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    failures = 0
    for name in PIPELINES:
        pipe = load_pipeline(name)
        expected_cls = {"sd21-tiny": "StableDiffusionPipeline", "sdxl-tiny": "StableDiffusionXLPipeline"}[name]
        if type(pipe).__name__ != expected_cls:
            print(f"FAIL {name}: loaded as {type(pipe).__name__}")
            failures += 1
        for sub in TOKENIZERS[name]:
            if (FIXTURES / name / sub / "tokenizer.json").exists():
                print(f"FAIL {name}/{sub}: tokenizer.json present (vocab.json/merges.txt must be the source)")
                failures += 1
        golden = load_file(str(GOLDEN / f"{name}.safetensors"))
        tensors, info = compute_goldens(name, pipe)
        sampling = json.loads((GOLDEN / "sampling.json").read_text())
        if sampling[name]["cases"] != json.loads(json.dumps(info)):
            print(f"FAIL {name}: sampling.json differs from a recomputation")
            failures += 1
        if set(golden) != set(tensors):
            print(f"FAIL {name}: tensor names differ: {sorted(set(golden) ^ set(tensors))}")
            failures += 1
        worst = 0.0
        for key in sorted(set(golden) & set(tensors)):
            a, b = golden[key], tensors[key]
            if a.shape != b.shape or a.dtype != b.dtype:
                print(f"FAIL {name}:{key}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
                failures += 1
                continue
            diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            scale = 1.0 + a.double().abs().max().item() if a.numel() else 1.0
            worst = max(worst, diff / scale)
            if diff > 1e-5 * scale:
                print(f"FAIL {name}:{key}: max abs diff {diff:.3e}")
                failures += 1
        with safe_open(str(GOLDEN / f"{name}.safetensors"), "pt") as f:
            meta = f.metadata()
        print(f"{name}: {len(golden)} tensors, worst relative diff {worst:.2e}, made with {meta}")
    if failures:
        print(f"{failures} check(s) failed")
        return 1
    print("all fixtures reproduce")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="reload the fixtures and verify every golden")
    parser.add_argument("--bpe", help="path to bpe_simple_vocab_16e6.txt.gz or an open_clip_torch wheel")
    args = parser.parse_args()
    setup_torch()
    if args.check:
        return check()
    generate(args.bpe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
