#!/usr/bin/env bash
# Online PSO against its baseline D3PO (issue 17; pso.md §3b): the same
# examples/online.toml (colourfulness reward, beta 50, clip 0.1, lr 1e-3,
# 150 steps, seed 0), once with the ratio against the frozen model (pso) and
# once against the policy that sampled the chain (d3po). Both measured on
# 250 held-out base-set prompts (`val` fold) at the model's own 4 steps: the
# reward, emoji-FID against the base set (how far the model moved),
# sharpness and prompt alignment.
#
#   experiments/online-d3po.sh            (resumable)
#
# Writes runs/online-{pso,d3po}/ and docs/experiments/online-d3po.{md,json,png}
# plus each run's validation curve as docs/experiments/online-<kind>-validation.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
runs=()
mkdir -p docs/experiments
for kind in pso d3po; do
  dir="runs/online-$kind"
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    "$PSOTUNE" tune examples/online.toml --set objective.kind="$kind" --out "$dir"
  fi
  cp "$dir/validation.jsonl" "docs/experiments/online-$kind-validation.jsonl"
  runs+=(--run "$dir")
done
"$PSOTUNE" eval --model models/emoji "${runs[@]}" \
  --prompts style=twemoji,split=train,fold=val --reference style=twemoji,split=train --num-prompts 250 \
  --reward '{ kind = "colourfulness" }' \
  --grid docs/experiments/online-d3po.png --json docs/experiments/online-d3po.json \
  | tee docs/experiments/online-d3po.md
