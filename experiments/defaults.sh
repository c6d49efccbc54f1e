#!/usr/bin/env bash
# Which style-transfer defaults generalise? (issue 17) A small grid around
# examples/style.toml (PSO at t = 259, lr 2e-5, one-step transfer 10, 600
# steps; beta 50 until this grid chose 20 on 2026-12-02; every row sets its
# beta), trained towards one style and measured on that style's
# held-out concepts at 1 and 4 steps, with sft (the naive loss) beside it as
# the measure of how far the data can pull the model:
#
#   STYLE=noto     the style the example was tuned on: assets/emoji's Noto
#                  "fit" images, measured on the 187 Noto "val" concepts (the
#                  same data and prompts as experiments/style-transfer.sh,
#                  whose sft run it shares)
#   STYLE=openmoji a style no setting was tuned on: the 2,206 OpenMoji "fit"
#                  images of the full data (tools/fetch_emoji.sh builds it
#                  into data/emoji), measured on its 251 "val" concepts
#
#   STYLE=noto experiments/defaults.sh; STYLE=openmoji experiments/defaults.sh   (resumable)
#
# CANDIDATES (environment) picks rows by name (default: all but
# beta20-lr5e-5). The tables of 2026-12-02 name the beta-50 rows by their
# old names: defaults-<style>-example (Noto: style-lr2e-5-pso-example). Writes
# runs/defaults-<style>-<name>/ (the Noto sft is runs/style-lr2e-5-sft) and docs/experiments/defaults-<style>.{md,json,png}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
STYLE="${STYLE:-noto}"
# name, then the --set overrides of examples/style.toml
GRID=(
  "beta50 objective.beta=50"
  "beta20 objective.beta=20"
  "lr5e-5 objective.beta=50 optim.lr=5e-5"
  "lr1e-4 objective.beta=50 optim.lr=1e-4"
  "beta20-lr5e-5 objective.beta=20 optim.lr=5e-5"
  "sft objective.kind=sft objective.one-step-transfer=0"
)
CANDIDATES="${CANDIDATES:-beta50 beta20 lr5e-5 lr1e-4 sft}"
case "$STYLE" in
  noto)
    data=(); select=()
    eval_args=(--prompts style=noto,fold=val --num-prompts 400)
    ;;
  openmoji)
    DATA="${DATA:-data/emoji}"
    [[ -f "$DATA/metadata.jsonl" ]] || { echo "no $DATA/metadata.jsonl: run tools/fetch_emoji.sh first" >&2; exit 1; }
    data=(--set "data.images=\"$DATA\"")
    select=(--set 'data.select={ style = "openmoji", split = "train", fold = "fit" }')
    eval_args=(--data "$DATA" --prompts style=openmoji,split=train,fold=val --num-prompts 251)
    ;;
  *) echo "STYLE must be noto or openmoji" >&2; exit 2 ;;
esac
refs="runs/defaults-$STYLE-references"
[[ $STYLE == noto ]] && refs=runs/style-references
runs=()
for spec in "${GRID[@]}"; do
  read -r name sets <<<"$spec"
  [[ " $CANDIDATES " == *" $name "* ]] || continue
  dir="runs/defaults-$STYLE-$name"
  extra=()
  # The Noto sft run is the style-transfer contrast's, made with exactly
  # the overrides that script gives it.
  if [[ $STYLE == noto && $name == sft ]]; then
    dir=runs/style-lr2e-5-sft
    extra=(--set objective.kind=sft --set optim.max-steps=600 --set optim.lr=2e-5
           --set objective.beta=500 --set objective.one-step-transfer=0)
  fi
  if [[ -f "$dir/config.toml" ]]; then
    "$PSOTUNE" tune --resume "$dir"
  else
    args=("${data[@]}" "${select[@]}")
    for s in $sets; do args+=(--set "$s"); done
    mkdir -p "$dir"
    # Every run of a style samples the same references (same captions, same seed).
    [[ -d $refs ]] && cp -rn "$refs" "$dir/references"
    "$PSOTUNE" tune examples/style.toml "${args[@]}" "${extra[@]}" --out "$dir"
    [[ -d $refs ]] || cp -r "$dir/references" "$refs"
  fi
  runs+=(--run "$dir")
done
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji "${eval_args[@]}" "${runs[@]}" --steps 1,4 \
  --grid "docs/experiments/defaults-$STYLE.png" --json "docs/experiments/defaults-$STYLE.json" \
  | tee "docs/experiments/defaults-$STYLE.md"
