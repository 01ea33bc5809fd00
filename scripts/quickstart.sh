#!/usr/bin/env bash
# Set up (idempotent) and run the quickstart: a short run of the conditional 2-D study (LFM vs FM),
# printing its table and writing outputs/quickstart/samples.png. The README table uses the full study.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/cond2d_study.py --out outputs/quickstart --steps 2000 --eval-n 1000 "$@"
