#!/usr/bin/env bash
# The `psotune label` round trip on the built-in model (issue 21): a
# scripted labeller that follows a rule a person could ("pick the brighter
# image", tools/label_by_rule.py) labels one pair for each of 48 Noto `fit`
# captions through the real server; examples/pairs.toml trains on the
# manifest it wrote; then base and tuned sample 48 `val` captions (no pair
# came from them) at 2 seeds each, and the rule judges tuned against base
# image by image.
#
#   experiments/label-roundtrip.sh        (resumable: labels and the run are kept)
#
# Writes runs/label-rule/ (the labels), runs/label-rule-tune/ and
# docs/experiments/label-roundtrip.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PSOTUNE="${PSOTUNE:-target/release/psotune}"
[[ -x "$PSOTUNE" ]] || cargo build --release -p psotune-cli
mkdir -p runs docs/experiments
captions() {  # fold, how many: distinct Noto captions in file order
  python3 -c "
import json, sys
seen = []
for l in open('assets/emoji/metadata.jsonl'):
    r = json.loads(l)
    if r['style'] == 'noto' and r['fold'] == sys.argv[1] and r['text'] not in seen:
        seen.append(r['text'])
print('\n'.join(seen[:int(sys.argv[2])]))" "$1" "$2"
}
captions fit 48 > runs/label-rule-prompts.txt
captions val 48 > runs/label-rule-heldout.txt

if [[ ! -s runs/label-rule/pairs.jsonl ]] || [[ $(wc -l < runs/label-rule/pairs.jsonl) -lt 48 ]]; then
  "$PSOTUNE" label --model models/emoji --prompts runs/label-rule-prompts.txt --out runs/label-rule \
    --pairs-per-prompt 1 --port 0 --labeler brighter > runs/label-rule.addr &
  server=$!
  trap 'kill -INT $server 2>/dev/null || true' EXIT
  until grep -q http runs/label-rule.addr; do sleep 0.2; done
  url="$(grep -o 'http://[^ ]*' runs/label-rule.addr)"
  python3 tools/label_by_rule.py label "$url" | tee runs/label-rule.log
  kill -INT $server; wait $server || true
  trap - EXIT
fi

run=runs/label-rule-tune
if [[ -f $run/config.toml ]]; then
  "$PSOTUNE" tune --resume "$run"
else
  "$PSOTUNE" tune examples/pairs.toml --set 'data.manifest="runs/label-rule/pairs.jsonl"' --out "$run"
fi
"$PSOTUNE" export "$run" --format diffusers --out "$run/lora.safetensors"

prompts=()
while IFS= read -r p; do prompts+=(--prompt "$p"); done < runs/label-rule-heldout.txt
for side in base tuned; do
  rm -rf "runs/label-rule-$side"
  extra=()
  [[ $side == tuned ]] && extra=(--lora "$run/lora.safetensors")
  "$PSOTUNE" sample --model models/emoji "${prompts[@]}" --num-images 2 --seed 1000 "${extra[@]}" \
    --out "runs/label-rule-$side" > /dev/null
done
{
  echo "Labelled by the rule \"pick the brighter image\" through psotune label: $(cat runs/label-rule.log 2>/dev/null || echo "labels from an earlier run")."
  echo "Trained with examples/pairs.toml on runs/label-rule/pairs.jsonl; measured on 48 held-out Noto captions x 2 seeds (4 steps)."
  echo
  python3 tools/label_by_rule.py wins runs/label-rule-base runs/label-rule-tuned
} | tee docs/experiments/label-roundtrip.md
