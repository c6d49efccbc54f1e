#!/usr/bin/env bash
# Create (or reuse) the throwaway Python venv that tools/make_fixtures.py needs.
#
#   tools/setup_venv.sh                      # venv at ./.venv (git-ignored)
#   PSOTUNE_VENV=/some/path tools/setup_venv.sh
#
# Idempotent: when every pin in tools/requirements.txt is already installed at the
# pinned version, nothing is downloaded. Uses the registry that pip is configured for.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
req="$here/requirements.txt"
venv="${PSOTUNE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv at $venv"
    "$python" -m venv "$venv"
fi

# Exit 0 when every "name==version" line of requirements.txt is installed as pinned.
satisfied() {
    "$venv/bin/python" - "$req" <<'PY'
import sys
from importlib import metadata

missing = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    # Local build tags (torch's "+cpu"/"+cu132") satisfy the pin.
    if have is None or (want and have.split("+")[0] != want):
        missing.append(f"{name}: want {want or 'any'}, have {have}")
for m in missing:
    print("  " + m)
sys.exit(1 if missing else 0)
PY
}

if satisfied >/dev/null; then
    echo "venv $venv already satisfies $req"
    exit 0
fi
echo "installing into $venv:"
satisfied || true
"$venv/bin/python" -m pip install --disable-pip-version-check -r "$req"
satisfied
echo "venv $venv ready"
