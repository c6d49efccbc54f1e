#!/usr/bin/env bash
# Offline preference pairs (pso.md §3a, issue 6): the model's own samples,
# ranked by a scorer, become a pairs set; PSO on it should raise that score
# on prompts it never trained on. The scorer is the emoji evaluator's prompt
# alignment (the probability of the prompt's emoji subgroup): 4 samples per
# prompt for 400 base-set prompts of the `fit` fold, best vs worst.
#
#   experiments/pairs.sh            (resumable)
#
# Writes runs/pairs-data/ (pairs.jsonl + images), runs/pairs-pso/ and
# docs/experiments/pairs.{md,json,png}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
REWARD='{ kind = "evaluator-alignment", evaluator = "models/emoji/evaluator", metadata = "assets/emoji" }'
if [[ ! -f runs/pairs-data/pairs.jsonl ]]; then
  "$PSOTUNE" pairs --data assets/emoji --prompts style=twemoji,split=train,fold=fit --num-prompts 400 \
    --samples 4 --reward "$REWARD" --out runs/pairs-data
fi
if [[ -f runs/pairs-pso/config.toml ]]; then
  "$PSOTUNE" tune --resume runs/pairs-pso
else
  "$PSOTUNE" tune examples/pairs.toml --out runs/pairs-pso
fi
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji --run runs/pairs-pso \
  --prompts style=twemoji,split=train,fold=val --num-prompts 250 --steps 1,4 --reward "$REWARD" \
  --grid docs/experiments/pairs.png --json docs/experiments/pairs.json \
  | tee docs/experiments/pairs.md
