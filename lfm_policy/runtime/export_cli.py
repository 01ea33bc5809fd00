"""``lfm-policy export``: a checkpoint's inference as one parity-checked ONNX graph (registered by ``lfm_policy.cli``).

Heavy imports (torch, onnx, onnxruntime) happen inside the command function.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lfm_policy.runtime.interface import parse_solver


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the top-level parser."""
    p = subparsers.add_parser(
        "export", help="export a checkpoint's whole inference (normalization, encoder, sampler) to one ONNX file",
        description="Trace observation normalization, the EMA encoder and the head's sampler with a fixed solver "
        "into one ONNX graph: inputs = the observation keys (images uint8 (B, To, H, W, C), low-dim float32 "
        "(B, To, D)) + noise float32 (B, H, Da), output chunk float32 (B, H, Da) in action units. The file is "
        "published only after onnxruntime matches eager PyTorch on random windows; FILE.json describes it.")
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + policy.json)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default onnx)")
    p.add_argument("--out", default=None, metavar="FILE", help="output file (default CHECKPOINT/policy.onnx)")
    p.add_argument("--solver", default=None, metavar="SOLVER",
                   help="euler/midpoint/heun/rk4[:STEPS] or student for every flow block, one per block as a list "
                        "(student,student,midpoint:1), or ddim[:STEPS] for a diffusion head (default: the "
                        "checkpoint's); adaptive dopri5 and DDPM cannot be exported")
    p.add_argument("--batch", type=int, default=None, metavar="B",
                   help="fix the batch dim to B (default: dynamic, one file for any batch size)")
    p.add_argument("--check-samples", type=int, default=8, metavar="K",
                   help="random observation windows of the onnxruntime-vs-PyTorch parity check (default 8)")
    p.add_argument("--bench", type=int, default=0, metavar="N",
                   help="also time N chunks of eager PyTorch vs onnxruntime, one thread each (default 0: no)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    import torch

    from lfm_policy import Policy
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.runtime.export import export_onnx
    from lfm_policy.runtime.export_check import compare_latency

    if args.batch is not None and args.batch < 1:
        raise LfmPolicyError(f"--batch must be ≥ 1, got {args.batch}")
    if args.check_samples < 1:
        raise LfmPolicyError(f"--check-samples must be ≥ 1, got {args.check_samples}")
    if args.bench < 0:
        raise LfmPolicyError(f"--bench must be ≥ 0, got {args.bench}")
    torch.set_num_threads(1)
    for name in ("onnxscript", "onnx_ir"):  # the graph optimizer logs every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    checkpoint = Path(args.checkpoint)
    policy = Policy.load(checkpoint)
    solver = parse_solver(policy, args.solver)
    out = Path(args.out) if args.out is not None else checkpoint / "policy.onnx"
    if out.is_dir():
        raise LfmPolicyError(f"--out {out}: is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = export_onnx(policy, out, solver=solver, batch=args.batch, check_samples=args.check_samples,
                         checkpoint=checkpoint)
    batch = f"batch {report.batch}" if report.batch is not None else "dynamic batch"
    print(f"wrote {report.path} ({report.facts['onnx_bytes'] / 2**20:.1f} MiB, opset {report.facts['opset']}, "
          f"{batch}) and {report.json_path.name}")
    print(f"  {report.head} head, solver {report.solver_text}, NFE {report.nfe}")
    inputs = ", ".join(f"{i['name']} {i['dtype']} {tuple(i['shape'])}" for i in report.inputs)
    print(f"  inputs: {inputs}")
    print(f"  parity vs PyTorch on {report.check_samples} random windows (onnxruntime CPU): max |diff| = "
          f"{report.parity_max_abs_diff:.2e} (tolerance {report.parity_tolerance:.2e})")
    if args.bench:
        lat = compare_latency(policy, report.path, solver=solver, calls=args.bench, warmup=min(20, args.bench))
        print(f"\nchunk latency, batch {lat.batch}, one thread, {lat.calls} calls each:\n{lat.markdown()}")
    return 0
