#!/usr/bin/env python3
"""A reward scorer for `psotune tune` ([reward] kind = "command"), Python
standard library only: the Hasler & Suesstrunk colourfulness of each image,
computed with the same operations in the same order as psotune's built-in
`colourfulness` reward, so both give bit-identical scores (the CLI test
checks that a run with either reward ends with the same weights).

Protocol (JSON lines): read {"images": [png paths], "prompts": [...]} from
stdin, write {"scores": [one float per image]} to stdout, flush; repeat
until stdin closes. Logs go to stderr.

Test hook: PSOTUNE_TEST_SCORER_FAIL="N:MODE" answers N requests, then
misbehaves on the next one: MODE = malformed | crash | hang | error.
"""
import json
import math
import os
import struct
import sys
import time
import zlib


def read_png(path):
    """(width, height, RGB bytes) of an 8-bit RGB, non-interlaced PNG."""
    with open(path, "rb") as f:
        return decode_png(f.read(), path)


def decode_png(data, path="image"):
    """(width, height, RGB bytes) of the bytes of an 8-bit RGB, non-interlaced
    PNG (what psotune writes; tools/label_by_rule.py uses it too)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, head = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = head
    if (depth, colour, interlace) != (8, 2, 0):
        raise ValueError(f"{path}: expected 8-bit RGB without interlacing")
    raw, bpp, stride = zlib.decompress(idat), 3, width * 3
    out, prev, i = bytearray(), bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, bytes(out)


def colourfulness(px):
    """sqrt(var_rg + var_yb) + 0.3 sqrt(mean_rg^2 + mean_yb^2), left-to-right sums."""
    n = len(px) // 3
    if n == 0:
        return 0.0
    s_rg = s_yb = 0.0
    for k in range(0, 3 * n, 3):
        r, g, b = float(px[k]), float(px[k + 1]), float(px[k + 2])
        s_rg += r - g
        s_yb += 0.5 * (r + g) - b
    m_rg, m_yb = s_rg / n, s_yb / n
    q_rg = q_yb = 0.0
    for k in range(0, 3 * n, 3):
        r, g, b = float(px[k]), float(px[k + 1]), float(px[k + 2])
        rg, yb = r - g, 0.5 * (r + g) - b
        q_rg += (rg - m_rg) * (rg - m_rg)
        q_yb += (yb - m_yb) * (yb - m_yb)
    return math.sqrt(q_rg / n + q_yb / n) + 0.3 * math.sqrt(m_rg * m_rg + m_yb * m_yb)


def main():
    fail = os.environ.get("PSOTUNE_TEST_SCORER_FAIL")
    after, mode = (int(fail.split(":")[0]), fail.split(":")[1]) if fail else (None, None)
    print("colourfulness scorer ready", file=sys.stderr, flush=True)
    for served, line in enumerate(sys.stdin):
        if after is not None and served >= after:
            print(f"failing on request {served + 1} as asked ({mode})", file=sys.stderr, flush=True)
            if mode == "malformed":
                print("scores: 1, 2, 3", flush=True)
                continue
            if mode == "crash":
                sys.exit(3)
            if mode == "hang":
                time.sleep(3600)
            if mode == "error":
                print(json.dumps({"error": "the scorer was told to fail"}), flush=True)
                continue
        request = json.loads(line)
        scores = [colourfulness(read_png(p)[2]) for p in request["images"]]
        print(json.dumps({"scores": scores}), flush=True)


if __name__ == "__main__":
    main()
