#!/usr/bin/env bash
# Do the example's settings generalise to a style they were not tuned on?
# (issue 17) examples/style.toml's settings (PSO beta 50 at t = 259, lr 2e-5,
# one-step transfer 10) were chosen by measuring on Noto. Here the same
# config trains towards OpenMoji (the fit fold of the full emoji data, which
# tools/fetch_emoji.sh builds into data/emoji; assets/emoji carries only 8
# OpenMoji images), with sft (the naive loss) beside it as the measure of
# how far the data can pull the model, and PSO at a higher learning rate.
# Measured on the OpenMoji concepts of the val fold at 1 and 4 steps.
#
#   tools/fetch_emoji.sh && experiments/defaults-openmoji.sh    (resumable)
#
# Writes runs/openmoji-<name>/ and docs/experiments/defaults-openmoji.{md,json,png}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
DATA="${DATA:-data/emoji}"
[[ -f "$DATA/metadata.jsonl" ]] || { echo "no $DATA/metadata.jsonl: run tools/fetch_emoji.sh first" >&2; exit 1; }
runs=()
# name, then the --set overrides of examples/style.toml
for spec in "example" "example-lr1e-4 optim.lr=1e-4" "sft objective.kind=sft objective.one-step-transfer=0"; do
  read -r name sets <<<"$spec"
  dir="runs/openmoji-$name"
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    args=(--set "data.images=\"$DATA\"" --set 'data.select={ style = "openmoji", split = "train", fold = "fit" }')
    for s in $sets; do args+=(--set "$s"); done
    mkdir -p "$dir"
    [[ -d runs/openmoji-references ]] && cp -rn runs/openmoji-references "$dir/references"
    "$PSOTUNE" tune examples/style.toml "${args[@]}" --out "$dir"
    [[ -d runs/openmoji-references ]] || cp -r "$dir/references" runs/openmoji-references
  fi
  runs+=(--run "$dir")
done
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji --data "$DATA" "${runs[@]}" \
  --prompts style=openmoji,split=train,fold=val --num-prompts 251 --steps 1,4 \
  --grid docs/experiments/defaults-openmoji.png --json docs/experiments/defaults-openmoji.json \
  | tee docs/experiments/defaults-openmoji.md
