#!/usr/bin/env bash
# Online PSO (pso.md §3b, issue 7) on the emoji world with a built-in reward
# (colourfulness): examples/online.toml as written, then the tuned and base
# model measured on 250 held-out base-set prompts (`val` fold) at the
# model's own 4 steps: the mean reward, and emoji-FID against the base set
# to show how far the model moved. The reward curve on the run's own
# held-out prompts is runs/online/validation.jsonl.
#
#   experiments/online.sh            (resumable)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
if [[ -f runs/online/config.toml ]]; then
  "$PSOTUNE" tune --resume runs/online
else
  "$PSOTUNE" tune examples/online.toml --out runs/online
fi
mkdir -p docs/experiments
cp runs/online/validation.jsonl docs/experiments/online-validation.jsonl
"$PSOTUNE" eval --model models/emoji --run runs/online \
  --prompts style=twemoji,split=train,fold=val --reference style=twemoji,split=train --num-prompts 250 \
  --reward '{ kind = "colourfulness" }' \
  --grid docs/experiments/online.png --json docs/experiments/online.json \
  | tee docs/experiments/online.md
