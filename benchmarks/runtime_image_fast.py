"""Image-policy chunk latency (two 84×84 cameras, small CNN, UNet 64-128-256) through the fast paths:
eager PyTorch, torch.compile and onnxruntime (one graph, lfm-policy export), for distilled LFM (4 and 2
blocks), distilled FM and DDIM-10 — one process, batch 1, one thread.

    python benchmarks/runtime_image_fast.py --out outputs/runtime/image_fast.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
from runtime_latency import image_policy

from lfm_policy.heads import DiffusionSampler
from lfm_policy.runtime.bench import bench_policy
from lfm_policy.runtime.export import export_onnx
from lfm_policy.runtime.export_check import compare_latency

ROWS = [
    ("LFM distilled", lambda: image_policy("lfm", distilled=True), None),
    ("LFM distilled, 2 blocks", lambda: image_policy("lfm", distilled=True, n_blocks=2), None),
    ("FM distilled", lambda: image_policy("fm", distilled=True), None),
    ("DDIM-10", lambda: image_policy("diffusion"), DiffusionSampler("ddim", 10)),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, make, solver in ROWS:
            policy = make()
            eager = bench_policy(policy, solver=solver, calls=args.calls, warmup=5, throughput_batch=0)
            comp = bench_policy(policy, solver=solver, calls=args.calls, warmup=5, throughput_batch=0, compile=True)
            path = Path(tmp) / "p.onnx"
            rep = export_onnx(policy, path, solver=solver, batch=1, check_samples=2)
            ort = compare_latency(policy, path, solver=solver, calls=args.calls, warmup=5)
            res[label] = {"nfe": eager["nfe"], "eager_ms": eager["chunk_ms"]["p50"],
                          "compile_ms": comp["chunk_ms"]["p50"], "ort_ms": ort.onnx_p50_ms,
                          "ort_eager_ms": ort.eager_p50_ms, "parity": rep.parity_max_abs_diff}
            print(label, res[label], flush=True)
    base = res["DDIM-10"]
    print("| row | NFE | eager ms | ÷ DDIM-10 | torch.compile ms | ÷ DDIM-10 | onnxruntime ms | ÷ DDIM-10 |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in res.items():
        cells = [f"{r[k]:.2f} | {r[k] / base[k]:.2f}" for k in ("eager_ms", "compile_ms", "ort_ms")]
        print(f"| {label} | {r['nfe']} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
