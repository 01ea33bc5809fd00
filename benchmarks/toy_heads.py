"""Multimodal toy task: success and mode coverage of lfm / fm / diffusion / regression heads.

Collects expert demos of ``toy/point-obstacle`` (the expert passes the obstacle left or right, 50/50),
trains each head with the same trunk, data, seed and step budget, then rolls each policy out on the
same evaluation seeds (from 100000) with lfm_policy.eval's Evaluator (To = 2, Ta = 8).

    python benchmarks/toy_heads.py --out outputs/toy_heads --demos 300 --steps 6000   # ~10 min on 2 CPU cores

Flow heads (lfm, fm) are evaluated at several sampling budgets (--flow-steps midpoint steps per block).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lfm_policy import Policy
from lfm_policy.cli import main as cli_main
from lfm_policy.eval.rollout import EvalConfig, Evaluator
from lfm_policy.flow import SolverConfig
from lfm_policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def rollout(evaluator, policy: Policy, episodes: int, solver=None) -> dict:
    """Success, successes per mode and chunk latency on seeds 100000.. (lfm_policy.eval's Evaluator)."""
    summary = evaluator.run(policy, episodes, seed_start=100000, solver=solver).summary()
    return {"success": summary["success_rate"],
            "modes": {m: c / summary["n_episodes"] for m, c in summary["success_modes"].items()},
            "chunk_ms_p50": summary["chunk_latency_ms"]["p50"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/toy_heads")
    p.add_argument("--demos", type=int, default=100)
    p.add_argument("--steps", type=int, default=3000, help="total training steps per head")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--heads", nargs="+", default=["lfm", "fm", "diffusion", "regression"])
    p.add_argument("--overrides", nargs="*", default=[], help="extra key=value for every run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flow-steps", type=int, nargs="+", default=[1, 4],
                   help="midpoint steps per block at which flow heads (lfm, fm) are evaluated")
    p.add_argument("--eval-only", action="store_true", help="reuse the checkpoints in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "toy.zarr"
    if not data.exists():
        cli_main(["collect", "--task", "toy/point-obstacle", "--episodes", str(args.demos), "--out", str(data),
                  "--seed", "0"])
    rows = []
    evaluator = Evaluator(EvalConfig(task="toy/point-obstacle", n_envs=1))
    for kind in args.heads:
        cfg = TrainConfig.from_json(ROOT / "configs" / "toy_lowdim.json").with_overrides(
            [f"data.path={data}", f"out_dir={out / kind}", f"policy.head.kind={kind}", f"total_steps={args.steps}",
             "val_every=100000", "checkpoint_every=100000", *args.overrides])
        t0 = time.perf_counter()
        ckpt = (out / kind / "checkpoints" / "latest" if args.eval_only
                else train(cfg, progress=False, overwrite=True))
        train_s = float("nan") if args.eval_only else time.perf_counter() - t0
        policy = Policy.load(ckpt)
        solvers = [SolverConfig(method="midpoint", steps=k) for k in args.flow_steps] if kind in ("lfm", "fm") \
            else [None]
        for solver in solvers:
            res = rollout(evaluator, policy, args.eval_episodes, solver)
            row = {"head": kind, "nfe": policy.nfe(solver), "train_s": train_s,
                   "params": policy.num_trained_params(), **res}
            rows.append(row)
            print(f"{kind:<11} NFE={row['nfe']:<4} success={row['success']:.2f} modes={row['modes']} "
                  f"chunk={row['chunk_ms_p50']:.2f} ms train={train_s:.0f}s", flush=True)
    evaluator.close()
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| head | NFE | params | success | left | right | chunk ms (p50, CPU) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['head']} | {r['nfe']} | {r['params']} | {r['success']:.2f} | {r['modes'].get('left', 0):.2f} | "
              f"{r['modes'].get('right', 0):.2f} | {r['chunk_ms_p50']:.2f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
