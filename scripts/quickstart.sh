#!/usr/bin/env bash
# Set up (idempotent) and run the quickstart: collect 100 expert demos of the multimodal toy task,
# train an LFM policy on them (4 blocks, 3000 steps, ~1–2 min on 2 CPU cores), evaluate it on 50
# episodes and write outputs/quickstart/eval/{results.json,report.md,videos/}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small policies run fastest on one thread per process
OUT=outputs/quickstart
rm -rf "$OUT"
.venv/bin/lfm-policy collect --task toy/point-obstacle --episodes 100 --out "$OUT/toy.zarr" --no-progress
.venv/bin/lfm-policy train --config configs/toy_lowdim.json data.path="$OUT/toy.zarr" out_dir="$OUT/run" \
    total_steps=3000 "$@" --no-progress
.venv/bin/lfm-policy eval "$OUT/run/checkpoints/latest" --task toy/point-obstacle --episodes 50 --videos 2 \
    --out "$OUT/eval" --no-progress
