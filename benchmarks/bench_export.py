"""ONNX export of the ``distill_table`` checkpoints: parity with PyTorch and chunk latency, eager vs onnxruntime.

For every task and head row (lfm, lfm distilled with its students, fm, fm distilled, diffusion as DDIM-10,
regression) the checkpoint is exported with :func:`lfm_policy.runtime.export.export_onnx` into
OUT/<task>/<row>.onnx (parity-checked on random windows), then eager PyTorch (one thread) and
onnxruntime (one intra-op thread) are timed at batch 1, interleaved. Writes OUT/results.json and
OUT/table.md and prints the table.

    python benchmarks/bench_export.py --out outputs/bench_export
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from lfm_policy import Policy
from lfm_policy.heads import DiffusionSampler
from lfm_policy.runtime.export import export_onnx
from lfm_policy.runtime.export_check import compare_latency

TASKS = ("toy_point-obstacle", "metaworld_pick-place-v3")
ROWS = ("lfm", "lfm_distilled", "fm", "fm_distilled", "diffusion", "regression")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="outputs/distill_table", help="directory of the distill_table runs")
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--calls", type=int, default=300, help="timed calls per runtime and row (default 300)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--check-samples", type=int, default=16)
    p.add_argument("--out", default="outputs/bench_export")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out = Path(args.out)
    results = []
    for task in args.tasks:
        (out / task).mkdir(parents=True, exist_ok=True)
        for row in args.rows:
            ckpt = Path(args.runs) / task / row / "checkpoints" / "latest"
            policy = Policy.load(ckpt)
            solver = DiffusionSampler("ddim", 10) if row == "diffusion" else None
            t0 = time.perf_counter()
            rep = export_onnx(policy, out / task / f"{row}.onnx", solver=solver, check_samples=args.check_samples,
                              checkpoint=ckpt)
            export_s = time.perf_counter() - t0
            lat = compare_latency(policy, rep.path, solver=solver, calls=args.calls, warmup=args.warmup)
            results.append({"task": task, "row": row, "head": rep.head, "solver": rep.solver_text, "nfe": rep.nfe,
                            "parity_max_abs_diff": rep.parity_max_abs_diff, "tolerance": rep.parity_tolerance,
                            "export_s": export_s, "onnx_mib": rep.facts["onnx_bytes"] / 2**20, **lat.to_dict()})
            r = results[-1]
            print(f"{task} {row}: parity {r['parity_max_abs_diff']:.1e}, eager {r['eager_p50_ms']:.3f} ms, "
                  f"onnx {r['onnx_p50_ms']:.3f} ms ({r['speedup']:.2f}×), export {export_s:.1f} s", flush=True)
    lines = ["| task | row | solver | NFE | parity max abs diff | eager p50 / p95 ms | onnxruntime p50 / p95 ms "
             "| eager ÷ ort | export s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        solver = r["solver"] if len(r["solver"]) <= 24 else f"{r['solver'].split(',')[0]} ×{r['solver'].count(',') + 1}"
        lines.append(f"| {r['task']} | {r['row']} | {solver} | {r['nfe']} | {r['parity_max_abs_diff']:.1e} "
                     f"| {r['eager_p50_ms']:.3f} / {r['eager_p95_ms']:.3f} | {r['onnx_p50_ms']:.3f} / "
                     f"{r['onnx_p95_ms']:.3f} | {r['speedup']:.2f}× | {r['export_s']:.1f} |")
    table = "\n".join(lines)
    meta = {"calls": args.calls, "warmup": args.warmup, "threads": 1, "batch": 1, "torch": torch.__version__}
    (out / "results.json").write_text(json.dumps({"settings": meta, "rows": results}, indent=2))
    (out / "table.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
