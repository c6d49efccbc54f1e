#!/usr/bin/env bash
# Builds the emoji dataset (Twemoji, Noto, OpenMoji) from the package
# registries only: `npm pack` for the two npm packages, cargo for the
# twemoji-assets and resvg crates. See tools/README.md ("Emoji dataset").
#
#   tools/fetch_emoji.sh [--size N] [--jobs N] [OUT_DIR]     (default data/emoji, 32 px)
#
# Resumable and idempotent: cached tarballs, unpacked packages and finished
# images are reused; a rerun rewrites nothing that is already right.
set -euo pipefail
for tool in npm cargo tar sha256sum; do
  command -v "$tool" >/dev/null || { echo "fetch_emoji.sh needs $tool" >&2; exit 1; }
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size|--jobs) EXTRA+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n 2,9p "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
OUT="${OUT:-$ROOT/data/emoji}"
CACHE="${PSOTUNE_CACHE:-$HOME/.cache/psotune}/emoji-src"
mkdir -p "$CACHE" "$OUT"

# name version sha256-of-tarball
PACKAGES=(
  "emoji-datasource-google 16.0.0 fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"
  "openmoji 17.0.0 55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"
)
for spec in "${PACKAGES[@]}"; do
  read -r name version sha <<<"$spec"
  tgz="$CACHE/$name-$version.tgz"
  dir="$CACHE/$name-$version"
  if [[ ! -f "$tgz" ]]; then
    echo "fetching $name@$version"
    (cd "$CACHE" && npm pack --silent "$name@$version" >/dev/null)
  fi
  echo "$sha  $tgz" | sha256sum -c --quiet - || { echo "checksum mismatch: $tgz (delete it to refetch)" >&2; exit 1; }
  if [[ ! -f "$dir/.unpacked" ]]; then
    echo "unpacking $name@$version"
    rm -rf "$dir" && mkdir -p "$dir"
    tar xzf "$tgz" -C "$dir" --strip-components=1
    touch "$dir/.unpacked"
  fi
done

# emoji-data's build script runs `cargo metadata --offline`, which needs the
# sources of every dependency, other platforms' included: fetch them first
# (a fresh cargo cache had only this platform's and the build failed).
cargo fetch --quiet --manifest-path "$ROOT/tools/emoji-data/Cargo.toml"
echo "building tools/emoji-data (release)"
cargo build --release --quiet --manifest-path "$ROOT/tools/emoji-data/Cargo.toml" \
  --target-dir "$ROOT/target/emoji-data"

"$ROOT/target/emoji-data/release/emoji-data" \
  --noto "$CACHE/emoji-datasource-google-16.0.0" \
  --openmoji "$CACHE/openmoji-17.0.0" \
  --out "$OUT" "${EXTRA[@]}"

# OpenAI's CLIP BPE merges, shipped inside the instant-clip-tokenizer crate
# (a dependency of emoji-data only for this): the emoji model's tokenizer is
# cut from it (crates/emoji-world, stage `tokenizer`).
BPE_DIR="$(cargo metadata --format-version 1 --manifest-path "$ROOT/tools/emoji-data/Cargo.toml" \
  | grep -o '"manifest_path":"[^"]*instant-clip-tokenizer-0\.1\.0/Cargo\.toml"' | head -1 \
  | sed -e 's/^"manifest_path":"//' -e 's|/Cargo\.toml"$||')"
[[ -f "$BPE_DIR/bpe_simple_vocab_16e6.txt" ]] || { echo "CLIP BPE file not found in the instant-clip-tokenizer crate" >&2; exit 1; }
cp "$BPE_DIR/bpe_simple_vocab_16e6.txt" "$OUT/clip-bpe.txt"
echo "CLIP BPE merges: $OUT/clip-bpe.txt"
