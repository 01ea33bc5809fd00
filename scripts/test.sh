#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite plus the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
.venv/bin/ruff check .
.venv/bin/pytest -n 2 -q "$@"
