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
import struct
import sys
import time
import urllib.request
import uuid
import zlib


def png_pixels(data):
    """(width, height, channels, rows of bytes) of an 8-bit, non-interlaced PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    w, h, depth, color, _, _, interlace = head
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    if depth != 8 or interlace:
        raise ValueError("only 8-bit non-interlaced PNGs")
    raw, stride, rows, prev = zlib.decompress(idat), w * channels, [], bytearray(w * channels)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, channels, rows


def brightness(data):
    w, h, ch, rows = png_pixels(data)
    total = 0.0
    for row in rows:
        for x in range(w):
            px = row[x * ch:(x + 1) * ch]
            total += px[0] if ch < 3 else 0.2126 * px[0] + 0.7152 * px[1] + 0.0722 * px[2]
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
