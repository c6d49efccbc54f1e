#!/usr/bin/env python3
"""Summarise metrics.jsonl `by_timestep` over the last N steps of runs (dev-side).

    python3 tools/by_timestep.py [--last 100] runs/a runs/b ...   # -> a markdown table
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--last", type=int, default=100, help="steps at the end of each run to pool")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    print(f"Pairs pooled over the last {a.last} steps of each run (`by_timestep` of metrics.jsonl).\n")
    print("| run | t | pairs | loss | margin | acc |")
    print("|---|---|---|---|---|---|")
    for run in a.runs:
        lines = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        pooled: dict[str, list[float]] = {}
        for m in lines[-a.last:]:
            for t, s in (m.get("by_timestep") or {}).items():
                p = pooled.setdefault(t, [0, 0.0, 0.0, 0.0])
                n = s["pairs"]
                p[0] += n
                p[1] += s["loss"] * n
                p[2] += s["margin"] * n
                p[3] += s["acc"] * n
        for t, (n, loss, margin, acc) in sorted(pooled.items(), key=lambda kv: -float(kv[0])):
            print(f"| {Path(run).name} | {t} | {n} | {loss / n:.3f} | {margin / n:.3f} | {acc / n:.2f} |")


if __name__ == "__main__":
    main()
