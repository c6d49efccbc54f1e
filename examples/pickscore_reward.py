#!/usr/bin/env python3
"""PickScore (Kirstain et al. 2023) as a psotune reward, over the command
protocol; the paper's online reward (pso.md §3b).

    [reward]
    kind = "command"
    command = ["python3", "examples/pickscore_reward.py"]
    timeout-secs = 300

psotune starts this program once and writes one JSON line per batch to its
stdin:
    {"images": ["/abs/run/reward-images/call-000001/000.png", ...],
     "prompts": ["an emoji of a cat", ...]}
and reads one line back from its stdout:
    {"scores": [21.3, ...]}        one finite float per image, higher is better
or  {"error": "message"}           ends the run with this message.
Nothing else may go to stdout: log to stderr (psotune shows its tail when
the program fails). A crash, a malformed reply or no reply within the
timeout ends the run; its last checkpoint stays usable with --resume.

Needs torch, transformers and Pillow (not psotune's dependencies). Model ids
and the device come from the environment:
    PICKSCORE_MODEL      (default yuvalkirstain/PickScore_v1)
    PICKSCORE_PROCESSOR  (default laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
    PICKSCORE_DEVICE     (default cuda if available, else cpu)
"""
import json
import os
import sys


def main():
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    device = os.environ.get("PICKSCORE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(os.environ.get("PICKSCORE_PROCESSOR", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"))
    model = AutoModel.from_pretrained(os.environ.get("PICKSCORE_MODEL", "yuvalkirstain/PickScore_v1")).eval().to(device)
    print(f"PickScore ready on {device}", file=sys.stderr, flush=True)

    @torch.no_grad()
    def score(paths, prompts):
        images = [Image.open(p).convert("RGB") for p in paths]
        pix = processor(images=images, return_tensors="pt").to(device)
        txt = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
        img_emb = model.get_image_features(**pix)
        txt_emb = model.get_text_features(**txt)
        img_emb = img_emb / img_emb.norm(dim=-1, keepdim=True)
        txt_emb = txt_emb / txt_emb.norm(dim=-1, keepdim=True)
        # PickScore: the CLIP logit scale times the cosine of each image with its own prompt.
        return (model.logit_scale.exp() * (img_emb * txt_emb).sum(-1)).float().cpu().tolist()

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            reply = {"scores": score(req["images"], req["prompts"])}
        except Exception as e:  # report, let psotune end the run with the message
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
