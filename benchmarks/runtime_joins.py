"""Chunk joining options of the ControlLoop, measured: success and smoothness on a simulated robot in real time.

Every option runs the same checkpoint on the same seeds (episode i: seed SEED_START+i, its noise as
`lfm-policy eval` draws it) through ControlLoop + SimRobot at --rate Hz. The inference latency is padded
to --latency-ms (a slower policy, a remote server), so that background inference takes d ≈ latency×rate
ticks and the joins have something to join. Reference row: the synchronous loop (no latency), which
executes exactly the actions of `lfm-policy eval`.

    python benchmarks/runtime_joins.py \
        --checkpoint outputs/distill_table/toy_point-obstacle/lfm_distilled/checkpoints/latest \
        --task toy/point-obstacle --episodes 50 --rate 50 --latency-ms 50 --out outputs/runtime/joins_toy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lfm_policy import Policy
from lfm_policy.eval.metrics import wilson_interval
from lfm_policy.runtime.interface import LocalPredictor
from lfm_policy.runtime.loop import ControlLoop, LoopConfig
from lfm_policy.runtime.sim_robot import SimRobot


class Delayed:
    """A predictor whose every call takes at least ``latency_ms`` (the rest of the interface passes through)."""

    def __init__(self, inner: LocalPredictor, latency_ms: float):
        self.inner, self.latency_s = inner, latency_ms / 1e3
        self.info, self.last_timing = inner.info, {}

    def reset(self, seed=None):
        self.inner.reset(seed)

    def predict(self, window, *, prefix=None, prefix_weights=None):
        t0 = time.perf_counter()
        out = self.inner.predict(window, prefix=prefix, prefix_weights=prefix_weights)
        time.sleep(max(0.0, self.latency_s - (time.perf_counter() - t0)))
        return out


OPTIONS = {
    "sync (= eval)": dict(prefetch=False),
    "none": dict(join="none"),
    "crossfade-3": dict(join="crossfade", crossfade_steps=3),
    "ensemble": dict(join="ensemble"),
    "inpaint": dict(join="inpaint"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed-start", type=int, default=100000)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--options", default=",".join(OPTIONS))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    robot = SimRobot(args.task)
    rows = {}
    for name in args.options.split(","):
        kw = OPTIONS[name]
        pred = LocalPredictor(policy)
        pred = pred if not kw.get("prefetch", True) else Delayed(pred, args.latency_ms)
        eps = []
        t0 = time.perf_counter()
        with ControlLoop(pred, LoopConfig(rate_hz=args.rate, **kw)) as loop:
            for i in range(args.episodes):
                seed = args.seed_start + i
                robot.reset(seed=seed)
                eps.append(loop.run(robot, seed=seed).to_dict())
        ok = [bool(e["extra"]["is_success"]) for e in eps]
        lo, hi = wilson_interval(sum(ok), len(ok))
        sm = [e["smoothness"] for e in eps if e["smoothness"]]
        rows[name] = {
            "success": float(np.mean(ok)), "wilson": [lo, hi], "episodes": len(ok),
            "mean_abs_delta": float(np.mean([s["mean_abs_delta"] for s in sm])),
            "boundary_abs_delta": float(np.mean([s["boundary_abs_delta"] for s in sm if s["boundary_abs_delta"]])),
            "mean_abs_jerk": float(np.mean([s["mean_abs_jerk"] for s in sm])),
            "overruns": int(sum(e["overruns"] for e in eps)), "steps": int(sum(e["steps"] for e in eps)),
            "delay_ticks_mean": float(np.mean([d for e in eps for d in e["delays"][1:]] or [0])),
            "inference_ms_p50": float(np.median([e["inference_ms"]["p50"] for e in eps])),
            "jitter_ms_p95": float(np.median([e["jitter_ms"]["p95"] for e in eps])),
            "per_seed_success": ok, "wall_s": time.perf_counter() - t0,
        }
        r = rows[name]
        print(f"{name}: success {r['success']:.2f} [{lo:.2f}, {hi:.2f}], |Δa| {r['mean_abs_delta']:.4f}, boundary "
              f"|Δa| {r['boundary_abs_delta']:.4f}, jerk {r['mean_abs_jerk']:.4f}, overruns {r['overruns']}, "
              f"d {r['delay_ticks_mean']:.2f} ticks, {r['wall_s']:.0f} s", flush=True)
    print(f"\n{args.task}, {Path(args.checkpoint).parent.parent.name}, {args.rate:g} Hz, "
          f"latency {args.latency_ms:g} ms, {args.episodes} episodes from seed {args.seed_start}")
    print("| join | success [95 % CI] | mean abs Δa | abs Δa at chunk switch | mean abs Δ²a | overruns | d (ticks) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['success']:.2f} [{r['wilson'][0]:.2f}, {r['wilson'][1]:.2f}] | "
              f"{r['mean_abs_delta']:.4f} | {r['boundary_abs_delta']:.4f} | {r['mean_abs_jerk']:.4f} | "
              f"{r['overruns']} | {r['delay_ticks_mean']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
