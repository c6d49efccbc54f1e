#!/usr/bin/env bash
# Rebuilds the built-in emoji model (models/emoji) from the package
# registries' data, start to finish, in about 3 hours on 2 CPU cores:
#
#   tools/build_emoji_world.sh            (resumable: rerun after any interruption)
#
# 1. tools/fetch_emoji.sh                  -> data/emoji (images, captions, CLIP BPE)
# 2. emoji-world all                        -> runs/emoji-world (checkpoints) and models/emoji
#    with the recipe tools/emoji-world.toml
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
tools/fetch_emoji.sh
cargo build --release -p emoji-world
exec target/release/emoji-world all --recipe tools/emoji-world.toml "$@"
