#!/usr/bin/env python3
"""A scripted labeller for `psotune label` and the score of its rule (dev-side, stdlib only).

The rule is one a person can follow: "pick the brighter image" (higher
mean luminance, 0.2126 R + 0.7152 G + 0.0722 B over all pixels).

    label_by_rule.py label URL [--labeler NAME]     label every pair the server hands out, then exit
    label_by_rule.py wins BASE_DIR TUNED_DIR        how often the rule prefers TUNED's image of each
                                                    file name over BASE's (same prompt and seed)
"""
import argparse
import json
import os
import sys
import time
import urllib.request
import uuid

# The standard-library PNG decoder of the command-reward test scorer.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "crates/psotune-cli/tests/scorers"))
from colourfulness import decode_png  # noqa: E402


def brightness(data):
    w, h, px = decode_png(data)
    total = 0.0
    for k in range(0, 3 * w * h, 3):
        total += 0.2126 * px[k] + 0.7152 * px[k + 1] + 0.0722 * px[k + 2]
    return total / (w * h * 255.0)


def call(url, body=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"content-type": "application/json"}, method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def label(a):
    base, session, n, gaps = a.url.rstrip("/"), uuid.uuid4().hex, 0, []
    answer = call(f"{base}/api/next?session={session}&labeler={a.labeler}")
    while answer["status"] != "done":
        if answer["status"] == "waiting":
            time.sleep(0.2)
            answer = call(f"{base}/api/next?session={session}&labeler={a.labeler}")
            continue
        if answer["status"] != "pair":
            sys.exit(f"server: {answer}")
        pair = answer["pair"]
        left, right = (brightness(urllib.request.urlopen(base + pair[s]).read()) for s in ("left", "right"))
        gaps.append(abs(left - right))
        answer = call(f"{base}/api/choice", {"session": session, "labeler": a.labeler, "pair": pair["id"],
                                            "choice": "left" if left >= right else "right"})
        n += 1
    print(f"labelled {n} pairs by brightness; mean gap between the two {sum(gaps) / max(n, 1):.4f}")


def wins(a):
    names = sorted(f for f in os.listdir(a.base) if f.endswith(".png"))
    if not names:
        sys.exit(f"no PNGs in {a.base}")
    b = [brightness(open(os.path.join(a.base, f), "rb").read()) for f in names]
    t = [brightness(open(os.path.join(a.tuned, f), "rb").read()) for f in names]
    won = sum(1 for x, y in zip(b, t) if y > x)
    ties = sum(1 for x, y in zip(b, t) if y == x)
    mean = lambda v: sum(v) / len(v)
    print(f"| images | tuned preferred by the rule | ties | mean brightness base | mean brightness tuned |")
    print(f"|---:|---:|---:|---:|---:|")
    print(f"| {len(names)} | {won} ({100 * won / len(names):.0f}%) | {ties} | {mean(b):.4f} | {mean(t):.4f} |")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("label")
    p.add_argument("url")
    p.add_argument("--labeler", default="brighter")
    p = sub.add_parser("wins")
    p.add_argument("base")
    p.add_argument("tuned")
    a = ap.parse_args()
    label(a) if a.cmd == "label" else wins(a)


if __name__ == "__main__":
    main()
