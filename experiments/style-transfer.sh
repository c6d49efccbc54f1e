#!/usr/bin/env bash
# The paper's central contrast in the emoji world (pso.md §3a, issue 6):
# style transfer of the 4-step emoji model to Noto with the same data,
# steps and learning rate under pso, sft, sft-distilled and diffusion-dpo
# (and pso with the one-step transfer term),
# then every run measured on the Noto concepts of the "val" fold, which no
# run trained on, at 1 and 4 steps.
#
#   experiments/style-transfer.sh            (resumable: finished runs are kept)
#
# Writes runs/style<TAG>-<name>/ and docs/experiments/style-transfer<TAG>.{md,json,png};
# LR, PSO_BETA, TRANSFER, STEPS and TAG (environment) vary the setting.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
STEPS="${STEPS:-600}"
LR="${LR:-2e-5}"            # the same for every objective
PSO_BETA="${PSO_BETA:-500}"  # examples/style.toml's
TAG="${TAG:--lr2e-5}"              # run and report names: runs/style<TAG>-<objective>
TRANSFER="${TRANSFER:-10}"   # objective.one-step-transfer of the pso-transfer run
runs=()
for name in pso pso-transfer sft sft-distilled diffusion-dpo; do
  dir="runs/style$TAG-$name"
  kind="${name%-transfer}"
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    extra=(--set objective.beta="$PSO_BETA")
    # Diffusion-DPO's beta lives on another scale (its paper's 5000).
    [[ $kind == diffusion-dpo ]] && extra=(--set objective.beta=5000)
    # PSO plus the one-step transfer term (README: why 1 step needs it);
    # every other run trains its objective alone.
    if [[ $name == pso-transfer ]]; then
      extra+=(--set objective.one-step-transfer="$TRANSFER")
    else
      extra+=(--set objective.one-step-transfer=0)
    fi
    mkdir -p "$dir"
    # Every run samples the same references (same captions, same seed): reuse them.
    [[ -d runs/style-references ]] && cp -rn runs/style-references "$dir/references"
    "$PSOTUNE" tune examples/style.toml --set objective.kind="$kind" --set optim.max-steps="$STEPS" \
      --set optim.lr="$LR" "${extra[@]}" --out "$dir"
    [[ -d runs/style-references ]] || cp -r "$dir/references" runs/style-references
  fi
  runs+=(--run "$dir")
done
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji "${runs[@]}" \
  --prompts style=noto,fold=val --num-prompts 400 --steps 1,4 \
  --grid "docs/experiments/style-transfer$TAG.png" --json "docs/experiments/style-transfer$TAG.json" \
  | tee "docs/experiments/style-transfer$TAG.md"
