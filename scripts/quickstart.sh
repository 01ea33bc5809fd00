#!/usr/bin/env bash
# Set up (idempotent) and run the quickstart: the conditional 2-D study (LFM vs FM), table + figure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/cond2d_study.py --out outputs/cond2d "$@"
