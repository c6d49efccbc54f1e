#!/usr/bin/env python3
"""Convert the official reward checkpoints to the local files psotune's native
scorers read (crates/psotune/src/reward/). Dev-side only: psotune itself never
runs Python and never downloads anything; fetch the checkpoints with your usual
tools first, then point this script at the local copies.

    python tools/convert_reward_checkpoints.py clip      --model DIR                     --out OUT_DIR
    python tools/convert_reward_checkpoints.py pickscore --model DIR --processor DIR     --out OUT_DIR
    python tools/convert_reward_checkpoints.py hpsv2     --checkpoint HPS_v2_compressed.pt --out OUT_DIR
    python tools/convert_reward_checkpoints.py aesthetic --checkpoint sac+logos+ava1-l14-linearMSE.pth --out head.safetensors

clip       a transformers CLIPModel folder (OpenAI CLIP ViT-L/14) -> the same
           folder layout with model.safetensors, tokenizer files and
           preprocessor_config.json copied along.
pickscore  PickScore_v1's CLIPModel folder plus the processor folder of its base
           model (CLIP-ViT-H-14-laion2B-s32B-b79K: tokenizer files and
           preprocessor_config.json) -> one folder with all of them.
hpsv2      HPSv2's .pt (HPS_v2_compressed.pt or HPS_v2.1_compressed.pt; a dict
           with 'state_dict', or a bare state dict) -> open_clip_model.safetensors
           + open_clip_config.json (ViT-H-14) + CLIP tokenizer files made from
           open_clip's bpe_simple_vocab_16e6.txt.gz (pad token <|endoftext|>).
aesthetic  improved-aesthetic-predictor's MLP .pth (layers.{0,2,4,6,7}) or the
           v1 linear head (sa_0_4_vit_l_14_linear.pth: weight, bias) -> one
           .safetensors file. The scorer also needs the CLIP ViT-L/14 folder
           made by the `clip` command.

Needs torch, safetensors and transformers; the hpsv2 command also needs the
open_clip_torch package (for its BPE merge list).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

import torch

TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

# open_clip/model_configs/ViT-H-14.json (the HPSv2 backbone) and its eval preprocessing.
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_state_dict(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path))
    print(f"wrote {path} ({len(sd)} tensors)")


def load_torch(path: Path) -> dict:
    # weights_only: these files are plain tensors; refuse arbitrary pickles.
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        sys.exit(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}


def copy_files(src: Path, dst: Path, names: list[str]) -> list[str]:
    copied = []
    for n in names:
        for cand in [src / n, src / "tokenizer" / n]:
            if cand.is_file():
                shutil.copy(cand, dst / n)
                copied.append(n)
                break
    return copied


def convert_clip_folder(model: Path, processor: Path | None, out: Path) -> None:
    from transformers import CLIPModel

    out.mkdir(parents=True, exist_ok=True)
    m = CLIPModel.from_pretrained(model, local_files_only=True, dtype=torch.float32)
    m.save_pretrained(out)  # config.json + model.safetensors
    src = processor or model
    copied = copy_files(src, out, TOKENIZER_FILES + ["preprocessor_config.json"])
    if "vocab.json" not in copied and "tokenizer.json" not in copied:
        sys.exit(f"{src}: no tokenizer files (vocab.json + merges.txt or tokenizer.json); pass --processor")
    print(f"wrote {out}: config.json, model.safetensors, {', '.join(copied)}")


def bpe_merges() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if not spec or not spec.origin:
        sys.exit("the hpsv2 command needs open_clip_torch installed (for bpe_simple_vocab_16e6.txt.gz)")
    lines = gzip.decompress((Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode("utf-8").split("\n")
    # open_clip's SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]
    return lines[1 : 49152 - 256 - 2 + 1]


def write_clip_tokenizer(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_fixtures import bytes_to_unicode

    merges = [tuple(m.split()) for m in bpe_merges()]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    write_json(out / "vocab.json", {t: i for i, t in enumerate(vocab)})
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    # "<|endoftext|>" as pad: a "!" pad token would be special and change how
    # prompts with "!" tokenize (open_clip pads with id 0 after the eot; psotune does too).
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    write_json(out / "tokenizer_config.json", {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    write_json(out / "special_tokens_map.json", special)


def convert_hpsv2(checkpoint: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.float() for k, v in load_torch(checkpoint).items() if not k.endswith("attn_mask")}
    if "visual.proj" not in sd or "text_projection" not in sd:
        sys.exit(f"{checkpoint}: not an open_clip CLIP state dict (no visual.proj / text_projection)")
    save_state_dict(sd, out / "open_clip_model.safetensors")
    write_json(out / "open_clip_config.json", {
        "model_cfg": VIT_H_14,
        "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"},
    })
    write_clip_tokenizer(out)
    print(f"wrote {out}: open_clip_config.json, vocab.json, merges.txt, tokenizer_config.json")


def convert_aesthetic(checkpoint: Path, out: Path) -> None:
    sd = {k: v.float() for k, v in load_torch(checkpoint).items()}
    keys = sorted(sd)
    mlp = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
    if keys != sorted(mlp) and keys != ["bias", "weight"]:
        sys.exit(f"{checkpoint}: expected the v2 MLP (layers.0..7) or the v1 linear head (weight, bias), found {keys}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(sd, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ["clip", "pickscore"]:
        p = sub.add_parser(name)
        p.add_argument("--model", type=Path, required=True, help="local transformers CLIPModel folder")
        p.add_argument("--processor", type=Path, help="folder with the tokenizer files and preprocessor_config.json")
        p.add_argument("--out", type=Path, required=True)
    for name in ["hpsv2", "aesthetic"]:
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd in ("clip", "pickscore"):
        convert_clip_folder(a.model, a.processor, a.out)
    elif a.cmd == "hpsv2":
        convert_hpsv2(a.checkpoint, a.out)
    else:
        convert_aesthetic(a.checkpoint, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
