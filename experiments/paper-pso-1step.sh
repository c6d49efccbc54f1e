#!/usr/bin/env bash
# The paper's own PSO at 1 step (issue 17): why does PSO alone (no one-step
# transfer term, which is psotune's addition) hurt the emoji model's 1-step
# samples when the paper reports 1-step gains on SDXL-Turbo? The style task
# of examples/style.toml with the transfer term off, at the paper's
# settings: beta 50 and 10, lr 1e-5 and 1e-4, trained at t = 999 only (the
# 1-step chain's timestep) or at all four of the model's timesteps. Every
# run measured on the val-fold Noto concepts at 1 and 4 steps; metrics.jsonl
# of the all-timestep runs has the loss and margin by timestep
# (`by_timestep`), and step_mix_probe switches the LoRA off at t = 999 only.
#
#   experiments/paper-pso-1step.sh            (resumable: finished runs are kept)
#
# Writes runs/paper-pso-<name>/ and docs/experiments/paper-pso-1step.{md,json,png}
# and docs/experiments/paper-pso-1step-mix-<name>.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
STEPS="${STEPS:-600}"
ALL="[999,759,499,259]"   # the emoji model's 4-step LCM timesteps
runs=()
for ts in t999 all; do
  for beta in 50 10; do
    for lr in 1e-5 1e-4; do
      name="b$beta-lr$lr-$ts"
      dir="runs/paper-pso-$name"
      if [[ -f "$dir/config.toml" ]]; then
        "$PSOTUNE" tune --resume "$dir"
      else
        timesteps="[999]"; [[ $ts == all ]] && timesteps="$ALL"
        mkdir -p "$dir"
        # Every run samples the same references (same captions, same seed): reuse them.
        [[ -d runs/style-references ]] && cp -rn runs/style-references "$dir/references"
        "$PSOTUNE" tune examples/style.toml --set objective.one-step-transfer=0 --set objective.beta="$beta" \
          --set optim.lr="$lr" --set objective.timesteps="$timesteps" --set optim.max-steps="$STEPS" --out "$dir"
        [[ -d runs/style-references ]] || cp -r "$dir/references" runs/style-references
      fi
      runs+=(--run "$dir")
    done
  done
done
mkdir -p docs/experiments
"$PSOTUNE" eval --model models/emoji "${runs[@]}" \
  --prompts style=noto,fold=val --num-prompts 400 --steps 1,4 \
  --grid docs/experiments/paper-pso-1step.png --json docs/experiments/paper-pso-1step.json \
  | tee docs/experiments/paper-pso-1step.md
# Which timestep the loss is lowered at, in the all-timestep runs.
python3 tools/by_timestep.py --last 100 runs/paper-pso-*-all | tee docs/experiments/paper-pso-1step-timesteps.md
# Is the 1-step damage the LoRA's effect at t = 999? The 4-step chain with
# the LoRA off at its first step only, and the 1-step chain with and without it.
for name in b50-lr1e-5-all b50-lr1e-4-all b10-lr1e-4-all; do
  lora="runs/paper-pso-$name/lora.safetensors"
  [[ -f $lora ]] || "$PSOTUNE" export "runs/paper-pso-$name" --format diffusers --out "$lora"
  cargo run --release -q -p psotune --example step_mix_probe -- "$lora" \
    | tee "docs/experiments/paper-pso-1step-mix-$name.md"
done
