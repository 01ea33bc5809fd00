#!/usr/bin/env bash
# Create (or reuse) .venv with everything lfm-policy needs. Idempotent: a second run only checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.lfm-policy-installed
# The stamp records what was installed; change pyproject.toml or this script and setup runs again.
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import lfm_policy" 2>/dev/null; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch and torchvision must be a matching pair (a CPU torch beside PyPI's torchvision fails to import).
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[all]"
echo "$WANT" > "$STAMP"
echo "lfm-policy installed in $VENV"
