#!/usr/bin/env bash
# Rebuilds the built-in emoji model (models/emoji) from the package
# registries' data, start to finish, in about 3 hours on 2 CPU cores:
#
#   tools/build_emoji_world.sh            (resumable: rerun after any interruption)
#
# 1. tools/fetch_emoji.sh                  -> data/emoji (images, captions, CLIP BPE)
# 2. emoji-world all                        -> runs/emoji-world (checkpoints), models/emoji
#    with the recipe tools/emoji-world.toml     (+ evaluator), assets/emoji (data subset)
# 3. the report's tables and grids          -> docs/emoji-world
# 4. tools/check_emoji_diffusers.py          (when the dev venv exists: diffusers loads it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
tools/fetch_emoji.sh
cargo build --release -p emoji-world
target/release/emoji-world all --recipe tools/emoji-world.toml "$@"
mkdir -p docs/emoji-world
cp runs/emoji-world/report/{report.md,report.json,teacher-vs-student.png,student-4step.png} docs/emoji-world/
if [[ -x "${PSOTUNE_VENV:-$ROOT/.venv}/bin/python" ]]; then
  cargo build --release -p psotune-cli
  "${PSOTUNE_VENV:-$ROOT/.venv}/bin/python" tools/check_emoji_diffusers.py models/emoji
fi
