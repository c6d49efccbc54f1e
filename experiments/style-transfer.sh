#!/usr/bin/env bash
# The paper's central contrast in the emoji world (pso.md §3a, issue 6):
# style transfer of the 4-step emoji model to Noto with the same data,
# steps and learning rate under pso, sft, sft-distilled and diffusion-dpo,
# then every run measured on the Noto concepts of the "val" fold, which no
# run trained on, at 1 and 4 steps.
#
#   experiments/style-transfer.sh            (resumable: finished runs are kept)
#
# Writes runs/style-<objective>/ and docs/experiments/style-transfer.{md,json,png}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
STEPS="${STEPS:-600}"
runs=()
for kind in pso sft sft-distilled diffusion-dpo; do
  dir="runs/style-$kind"
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    extra=()
    # Diffusion-DPO's beta lives on another scale (its paper's 5000).
    [[ $kind == diffusion-dpo ]] && extra=(--set objective.beta=5000)
    "$PSOTUNE" tune examples/style.toml --set objective.kind="$kind" --set optim.max-steps="$STEPS" "${extra[@]}" --out "$dir"
  fi
  runs+=(--run "$dir")
done
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji "${runs[@]}" \
  --prompts style=noto,fold=val --num-prompts 400 --steps 1,4 \
  --grid docs/experiments/style-transfer.png --json docs/experiments/style-transfer.json \
  | tee docs/experiments/style-transfer.md
