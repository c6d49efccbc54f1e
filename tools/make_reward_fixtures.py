#!/usr/bin/env python3
"""Build the tiny CLIP-family reward models and golden scores that psotune's
native scorers (crates/psotune/src/reward/) are checked against.

Dev-side only: the outputs are committed under fixtures/rewards/, so the Rust
tests never need Python. Reruns give byte-identical files (fixed seeds, one CPU
thread).

    /work/venv/py/bin/python tools/make_reward_fixtures.py           # (re)build
    /work/venv/py/bin/python tools/make_reward_fixtures.py --check   # verify

Needs torch, transformers 5.24, safetensors, Pillow, and open_clip_torch 3.3.0
with torchvision (`pip install --no-deps open-clip-torch==3.3.0 torchvision ftfy
wcwidth` into a venv that already has torch).

What is built (all random weights, float32):
  fixtures/rewards/images/*.png      four small RGB images of non-square sizes
  fixtures/rewards/clip-vit/         transformers CLIPModel (quick_gelu, legacy eos
                                     pooling), tokenizer files, preprocessor_config.json:
                                     the CLIP-score model and the aesthetic head's base
  fixtures/rewards/pickscore/        transformers CLIPModel (gelu, eos-id pooling,
                                     shortest edge 35 cropped to 32): PickScore's layout
  fixtures/rewards/open-clip/        open_clip CLIP from a tiny custom config
                                     (open_clip_config.json as open_clip's hub files
                                     write it, open_clip_model.safetensors, tokenizer
                                     files): HPSv2's layout
  fixtures/rewards/aesthetic/        mlp.safetensors (improved-aesthetic-predictor v2
                                     layout, narrower) and linear.safetensors (v1)
  fixtures/rewards/golden.safetensors, golden.json
                                     resize results of PIL, pixel values of every
                                     scorer's reference preprocessing, token ids,
                                     embeddings, scores

References, per scorer (image i is paired with prompt i):
  clip-score  torchmetrics' CLIPScore: 100 * max(cos(image, text), 0), images
              through transformers' CLIP processor with the PIL backend
              (CLIPImageProcessorPil: the processor of transformers 4, which the
              published numbers were made with)
  pickscore   PickScore_v1's example: logit_scale.exp() * cos(image, text)
  hpsv2       HPSv2's score: cos(image, text) of open_clip's normalised features,
              images through open_clip.image_transform(is_train=False)
  aesthetic   improved-aesthetic-predictor: head(image_embeds / |image_embeds|),
              images through OpenAI CLIP's own transform (torchvision Resize
              bicubic + CenterCrop + Normalize), which differs from the
              transformers processor in how the crop offset rounds
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (tokenizer helpers shared with the pipeline fixtures)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "rewards"

# name -> (width, height). Sizes chosen so that resizing goes up and down, and
# so that centre crops land on odd differences where the transformers
# processor (floor) and torchvision (round half to even) disagree.
IMAGES = {"wide.png": (45, 30), "tall.png": (30, 52), "small.png": (19, 13), "square.png": (37, 37)}
PROMPTS = [
    "a photo of a dog",
    "an emoji of a smiling cat, 2 apples!",
    "A watercolor painting of a lighthouse at dusk",
    " ".join(["a very long prompt about colourful mountains and rivers"] * 12),
]
# PIL resize cases: (image, (width, height), filter).
RESIZE_CASES = [
    ("wide.png", (48, 32), "bicubic"),  # up
    ("tall.png", (18, 31), "bicubic"),  # down, both axes
    ("small.png", (19, 40), "bicubic"),  # vertical pass only
    ("square.png", (11, 37), "bicubic"),  # horizontal pass only
    ("wide.png", (5, 3), "bicubic"),  # far down (wide support)
    ("tall.png", (33, 20), "bilinear"),  # Pillow runs the vertical pass first here
    ("square.png", (20, 12), "bicubic"),  # both down, horizontal first
    ("square.png", (29, 12), "bicubic"),  # both down, vertical first
]
SEED = {"images": 1, "clip-vit": 21, "pickscore": 22, "open-clip": 23, "aesthetic-mlp": 24, "aesthetic-linear": 25}

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": mf.BPE_MERGES + 514, "width": 32, "heads": 4, "layers": 2},
}
OPEN_CLIP_PREPROCESS = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
# improved-aesthetic-predictor's MLP is in -> 1024 -> 128 -> 64 -> 16 -> 1 (no
# activations, dropouts at 1, 3, 5); the same layout, narrower.
AESTHETIC_WIDTHS = [24, 12, 8, 4]


def make_images() -> dict[str, np.ndarray]:
    """Smooth colour gradients plus noise, so that every resize filter tap matters."""
    rng = np.random.RandomState(SEED["images"])
    out = {}
    for name, (w, h) in IMAGES.items():
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), ((x + y) % 7) / 6.0], axis=-1) * 200.0
        img = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).round().astype(np.uint8)
        out[name] = img
    return out


def clip_model(seed: int, hidden_act: str, eos_token_id: int, logit_scale: float):
    from transformers import CLIPConfig, CLIPModel

    vocab = mf.BPE_MERGES + 514
    text = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act=hidden_act, layer_norm_eps=1e-5, projection_dim=16,
        bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=1,
    )
    vision = dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, hidden_act=hidden_act, layer_norm_eps=1e-5, projection_dim=16,
    )
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=logit_scale)
    return mf.seeded(seed, lambda: CLIPModel(cfg))


def open_clip_model(seed: int):
    import open_clip

    return mf.seeded(seed, lambda: open_clip.model.CLIP(**OPEN_CLIP_CFG))


def aesthetic_heads(in_dim: int):
    def mlp():
        w = [in_dim] + AESTHETIC_WIDTHS
        return torch.nn.Sequential(
            torch.nn.Linear(w[0], w[1]), torch.nn.Dropout(0.2),
            torch.nn.Linear(w[1], w[2]), torch.nn.Dropout(0.2),
            torch.nn.Linear(w[2], w[3]), torch.nn.Dropout(0.1),
            torch.nn.Linear(w[3], w[4]),
            torch.nn.Linear(w[4], 1),
        )

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = mlp()

    return mf.seeded(SEED["aesthetic-mlp"], Mlp), mf.seeded(SEED["aesthetic-linear"], lambda: torch.nn.Linear(in_dim, 1))


def save_clip_folder(folder: Path, model, vocab, merges, size: int, crop: int) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok = mf.make_tokenizer(vocab, merges, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    mf.rewrite_tokenizer_folder(folder, vocab, merges, "<|endoftext|>")
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})
    proc.save_pretrained(folder)


def tiny_bpe_gz(bpe_gz: bytes, path: Path) -> None:
    """open_clip's SimpleTokenizer reads merges 1..N of a .txt.gz: the same cut as the HF files."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    path.write_bytes(gzip.compress("\n".join(lines[: 1 + mf.BPE_MERGES]).encode("utf-8"), mtime=0))


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def clip_embeds(model, pixel_values, input_ids, attention_mask=None):
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
        # the public entry points give the same numbers
        assert torch.equal(img, model.get_image_features(pixel_values=pixel_values).pooler_output)
    return img, txt


def openai_clip_transform(n_px: int):
    """OpenAI CLIP's `_transform` (clip/clip.py), which the aesthetic predictor's embeddings came through."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px),
                    lambda im: im.convert("RGB"), ToTensor(), Normalize(OPENAI_MEAN, OPENAI_STD)])


def compute(folder: Path, bpe_gz: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Every golden tensor, from the files under `folder` (so --check reloads what is committed)."""
    import open_clip
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    g: dict[str, torch.Tensor] = {}
    notes: dict = {}
    images = {n: Image.open(folder / "images" / n).convert("RGB") for n in IMAGES}
    names = list(IMAGES)
    for i, (name, (w, h), filt) in enumerate(RESIZE_CASES):
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[filt]
        g[f"resize.{i}"] = torch.from_numpy(np.array(images[name].resize((w, h), resample)).copy())

    # --- transformers CLIPModel scorers
    for key in ["clip-vit", "pickscore"]:
        d = folder / key
        model = CLIPModel.from_pretrained(d).eval()
        tok = CLIPTokenizer.from_pretrained(d)
        proc = CLIPImageProcessorPil.from_pretrained(d)
        ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        g[f"{key}.input_ids"] = ids
        # torchmetrics and PickScore pad to the longest prompt instead: the pooled
        # output is the same (causal mask), which this checks.
        short = tok(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        pix = [proc(images=images[n], return_tensors="pt").pixel_values for n in names]
        for n, p in zip(names, pix):
            g[f"{key}.pixel_values.{n}"] = p[0]
        img, txt = clip_embeds(model, torch.cat(pix), ids)
        _, txt_short = clip_embeds(model, torch.cat(pix), short.input_ids, short.attention_mask)
        assert (txt - txt_short).abs().max() < 1e-5
        g[f"{key}.image_embeds"], g[f"{key}.text_embeds"] = img, txt
        cos = (l2n(img) * l2n(txt)).sum(-1)
        g[f"{key}.cosine"] = cos
        if key == "clip-vit":
            # torchmetrics functional/multimodal/clip_score.py
            g["clip-score.scores"] = torch.clamp(100 * cos, min=0)
            # The aesthetic predictor on this CLIP, through OpenAI CLIP's transform.
            heads = load_file(folder / "aesthetic" / "mlp.safetensors"), load_file(folder / "aesthetic" / "linear.safetensors")
            t = openai_clip_transform(model.config.vision_config.image_size)
            apix = torch.stack([t(images[n]) for n in names])
            for n, p in zip(names, apix):
                g[f"aesthetic.pixel_values.{n}"] = p
            with torch.no_grad():
                emb = l2n(model.visual_projection(model.vision_model(pixel_values=apix).pooler_output))
                x = emb
                for j in [0, 2, 4, 6, 7]:
                    x = x @ heads[0][f"layers.{j}.weight"].T + heads[0][f"layers.{j}.bias"]
                g["aesthetic.image_embeds"] = emb
                g["aesthetic-mlp.scores"] = x[:, 0]
                g["aesthetic-linear.scores"] = (emb @ heads[1]["weight"].T + heads[1]["bias"])[:, 0]
        else:
            with torch.no_grad():
                g["pickscore.scores"] = model.logit_scale.exp() * cos
        # How far transformers 5's default (torchvision) processor lands from PIL's.
        fast = CLIPImageProcessor.from_pretrained(d)
        fpix = torch.cat([fast(images=images[n], return_tensors="pt").pixel_values for n in names])
        fimg, _ = clip_embeds(model, fpix, ids)
        notes[f"{key}: torchvision-backend processor vs PIL"] = {
            "max |pixel diff|": float((fpix - torch.cat(pix)).abs().max()),
            "max |cosine diff|": float(((l2n(fimg) * l2n(txt)).sum(-1) - cos).abs().max()),
        }

    # --- open_clip (HPSv2 layout)
    d = folder / "open-clip"
    cfg = json.loads((d / "open_clip_config.json").read_text())
    model = open_clip.model.CLIP(**cfg["model_cfg"], output_dict=True).eval()  # as HPSv2 builds it
    model.load_state_dict(load_file(d / "open_clip_model.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        bpe_path = Path(tmp) / "bpe.txt.gz"
        tiny_bpe_gz(bpe_gz, bpe_path)
        oc_tok = open_clip.tokenizer.SimpleTokenizer(bpe_path=str(bpe_path), context_length=77)
        ids = oc_tok(PROMPTS)
    # The HF files pad with <|endoftext|> so that "!" stays an ordinary token (a
    # "!" pad token is special to transformers and would tokenize differently);
    # open_clip pads with zeros, which psotune's open_clip scorer does too.
    hf = CLIPTokenizer.from_pretrained(d)(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    hf_ids = hf.input_ids * hf.attention_mask
    assert torch.equal(ids, hf_ids), "the HF tokenizer files must reproduce open_clip's tokens"
    g["hpsv2.input_ids"] = ids
    pre = cfg["preprocess_cfg"]
    t = open_clip.image_transform(cfg["model_cfg"]["vision_cfg"]["image_size"], is_train=False, mean=pre["mean"],
                                  std=pre["std"], resize_mode=pre["resize_mode"], interpolation=pre["interpolation"])
    pix = torch.stack([t(images[n]) for n in names])
    for n, p in zip(names, pix):
        g[f"hpsv2.pixel_values.{n}"] = p
    with torch.no_grad():
        img, txt = model.encode_image(pix), model.encode_text(ids)
        out = model(pix, ids)  # what HPSv2's score function calls
        score = torch.diagonal(out["image_features"] @ out["text_features"].T)
    g["hpsv2.image_embeds"], g["hpsv2.text_embeds"] = img, txt
    g["hpsv2.scores"] = score
    assert (score - (l2n(img) * l2n(txt)).sum(-1)).abs().max() < 1e-6

    g = {k: v.contiguous() for k, v in sorted(g.items())}
    meta = {"images": names, "prompts": PROMPTS, "resize": [[n, w, h, f] for n, (w, h), f in RESIZE_CASES]}
    return g, {"meta": meta, "notes": notes}


def generate(bpe: str | None) -> None:
    from PIL import Image
    from safetensors.torch import save_file

    vocab, merges = mf.clip_vocab(bpe_gz := mf.find_bpe_file(bpe), mf.BPE_MERGES)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    for name, arr in make_images().items():
        Image.fromarray(arr).save(OUT / "images" / name, optimize=False)

    save_clip_folder(OUT / "clip-vit", clip_model(SEED["clip-vit"], "quick_gelu", 2, 2.6592), vocab, merges, 32, 32)
    save_clip_folder(OUT / "pickscore", clip_model(SEED["pickscore"], "gelu", len(vocab) - 1, 4.0), vocab, merges, 35, 32)

    d = OUT / "open-clip"
    d.mkdir(parents=True, exist_ok=True)
    oc = open_clip_model(SEED["open-clip"])
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, d / "open_clip_model.safetensors")
    mf.write_json(d / "open_clip_config.json", {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": OPEN_CLIP_PREPROCESS})
    mf.make_tokenizer(vocab, merges, pad_token="<|endoftext|>").save_pretrained(d)
    mf.rewrite_tokenizer_folder(d, vocab, merges, "<|endoftext|>")

    d = OUT / "aesthetic"
    d.mkdir(parents=True, exist_ok=True)
    mlp, lin = aesthetic_heads(16)
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, d / "mlp.safetensors")
    save_file({k: v.contiguous() for k, v in lin.state_dict().items()}, d / "linear.safetensors")

    g, info = compute(OUT, bpe_gz)
    save_file(g, OUT / "golden.safetensors", metadata={"generator": "tools/make_reward_fixtures.py"})
    mf.write_json(OUT / "golden.json", info["meta"])
    for k, v in g.items():
        if k.endswith("scores") or k.endswith("cosine"):
            print(f"{k:28s} {[round(x, 5) for x in v.tolist()]}")
    for k, v in info["notes"].items():
        print(f"{k}: {v}")


def check(bpe: str | None) -> int:
    from safetensors.torch import load_file

    g, _ = compute(OUT, mf.find_bpe_file(bpe))
    stored = load_file(OUT / "golden.safetensors")
    bad = [k for k in g if k not in stored or g[k].shape != stored[k].shape
           or (g[k].double() - stored[k].double()).abs().max() > 1e-5 * max(1.0, float(stored[k].double().abs().max()))]
    bad += [k for k in stored if k not in g]
    for k in bad:
        print(f"MISMATCH {k}")
    print("ok" if not bad else f"{len(bad)} mismatches")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="recompute the goldens from the committed files and compare")
    ap.add_argument("--bpe", help="bpe_simple_vocab_16e6.txt.gz or an open_clip wheel (see make_fixtures.py)")
    args = ap.parse_args()
    mf.setup_torch()
    if args.check:
        return check(args.bpe)
    generate(args.bpe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
