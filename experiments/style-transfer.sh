#!/usr/bin/env bash
# The paper's central contrast in the emoji world (pso.md §3a, issue 6):
# style transfer of the 4-step emoji model to Noto with the same data,
# steps and learning rate under pso, sft, sft-distilled and diffusion-dpo
# at the model's own four timesteps (and pso with the one-step transfer
# term), plus examples/style.toml as written (pso-example: PSO at t = 259
# only, beta 20 (50 until 2026-12-02), with the transfer term), then every run measured on the
# Noto concepts of the "val" fold, which no run trained on, at 1 and 4 steps.
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
PSO_BETA="${PSO_BETA:-500}"  # of the pso and pso-transfer rows (pso-example keeps the example's own)
OWN_TIMESTEPS="[999,759,499,259]"  # the emoji model's 4-step LCM timesteps
TAG="${TAG:--lr2e-5}"              # run and report names: runs/style<TAG>-<objective>
TRANSFER="${TRANSFER:-10}"   # objective.one-step-transfer of the pso-transfer run
runs=()
for name in pso pso-transfer sft sft-distilled diffusion-dpo pso-example; do
  dir="runs/style$TAG-$name"
  case $name in pso-*) kind=pso ;; *) kind=$name ;; esac
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    extra=(--set objective.beta="$PSO_BETA")
    # Diffusion-DPO's beta lives on another scale (its paper's 5000).
    [[ $kind == diffusion-dpo ]] && extra=(--set objective.beta=5000)
    # The contrast trains at all of the model's own timesteps (sft and
    # diffusion-dpo draw uniform t and take none).
    [[ $name == pso || $name == pso-transfer || $name == sft-distilled ]] && extra+=(--set objective.timesteps="$OWN_TIMESTEPS")
    # PSO plus the one-step transfer term (README: why 1 step needs it);
    # every other contrast run trains its objective alone.
    if [[ $name == pso-transfer ]]; then
      extra+=(--set objective.one-step-transfer="$TRANSFER")
    elif [[ $name != pso-example ]]; then
      extra+=(--set objective.one-step-transfer=0)
    fi
    # The example as written: only the steps and learning rate are the script's.
    [[ $name == pso-example ]] && extra=()
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
