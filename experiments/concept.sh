#!/usr/bin/env bash
# Concept customization (pso.md §4, issue 6): the emoji model never saw an
# octopus (a held-out concept); it learns one from the set's three octopus
# images (one per style: all the set has) under "an emoji of sks octopus",
# with the PSO hinge objective, and with the naive diffusion loss (sft)
# beside it. Measured: evaluator-feature similarity of "sks octopus" samples
# to the instance images, and prompt alignment / emoji-FID on 256 other
# base-set prompts (does the rest of the model hold?).
#
#   experiments/concept.sh            (resumable)
#
# Writes runs/concept-<objective>/ and docs/experiments/concept.{md,json,png}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
runs=()
# name, then the --set overrides of examples/concept.toml. pso-hinge-t750 is
# the authors' concept trainer's timesteps (750/500/250/0) instead of the
# model's own (999/749/499/249).
for spec in "pso-hinge objective.kind=pso-hinge" "sft objective.kind=sft" \
            "pso-hinge-t750 objective.kind=pso-hinge objective.timesteps=[750,500,250,0]"; do
  read -r name sets <<<"$spec"
  dir="runs/concept-$name"
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    args=()
    for s in $sets; do args+=(--set "$s"); done
    "$PSOTUNE" tune examples/concept.toml "${args[@]}" --out "$dir"
  fi
  runs+=(--run "$dir")
done
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji "${runs[@]}" \
  --prompts style=twemoji,split=train --num-prompts 256 --steps 4 \
  --instance-images assets/emoji/twemoji/1f419.png --instance-images assets/emoji/noto/1f419.png \
  --instance-images assets/emoji/openmoji/1f419.png --instance-prompt "an emoji of sks octopus" --instance-samples 32 \
  --grid docs/experiments/concept.png --json docs/experiments/concept.json \
  | tee docs/experiments/concept.md
