"""Chunk latency of every head at batch 1 in ONE process (lfm-policy bench's timer), as ratios to DDIM-10.

Low-dim rows reload the trained checkpoints of benchmarks/distill_table.py (same trunk, data and budget per
task; the 2-block distilled LFM comes from benchmarks/lfm_ablations.py where that ran). Image rows build
policies with two 84×84 cameras and a small encoder (``small_cnn``) on a small UNet trunk (64-128-256) —
untrained weights: latency does not depend on them; the distilled LFM rows have one-step students in
place of their blocks, as ``lfm-policy distill`` makes them. Rows are interleaved over
--rounds rounds so that load drifts hit every row alike; medians are reported.

    python benchmarks/runtime_latency.py --out outputs/runtime/latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from lfm_policy import Policy, PolicyConfig, PolicySpec
from lfm_policy.flow import ChainConfig, SolverConfig
from lfm_policy.heads import DiffusionSampler, HeadConfig, NetConfig
from lfm_policy.nets.obs_encoder import ObsEncoderConfig
from lfm_policy.normalizer import LinearNormalizer
from lfm_policy.runtime.bench import bench_policy

LOWDIM_ROWS = [  # (label, checkpoint subdirectory, solver)
    ("LFM ODE (midpoint×1)", "lfm", None),
    ("LFM distilled", "lfm_distilled", None),
    ("LFM distilled, 2 blocks", "two_blocks_distilled", None),  # benchmarks/lfm_ablations.py (where it ran)
    ("FM euler×N", "fm", None),
    ("FM euler×10", "fm", SolverConfig(method="euler", steps=10)),
    ("FM distilled", "fm_distilled", None),
    ("DDIM-10", "diffusion", DiffusionSampler("ddim", 10)),
    ("DDPM-100", "diffusion", DiffusionSampler("ddpm")),
    ("regression", "regression", None),
]


def image_policy(kind: str, *, distilled: bool = False, n_blocks: int = 4) -> Policy:
    """A two-camera policy (84×84, small CNN encoder, UNet 64-128-256), ready to sample."""
    spec = PolicySpec(obs_shapes={"agentview_image": (84, 84, 3), "wrist_image": (84, 84, 3), "proprio": (9,)},
                      image_keys=("agentview_image", "wrist_image"), action_dim=7)
    n = n_blocks if kind == "lfm" else 1
    student = SolverConfig(method="student")
    chain = ChainConfig(n_blocks=n, sample_solver=SolverConfig(method="midpoint", steps=1),
                        student_steps=(1,) * n if distilled else None,
                        sample_solvers=(student,) * n if distilled else None)
    head = HeadConfig(kind=kind, net=NetConfig(family="unet"), chain=chain)
    head.net.unet.down_dims = (64, 128, 256)
    cfg = PolicyConfig(n_obs_steps=2, horizon=16, n_action_steps=8, head=head,
                       encoder=ObsEncoderConfig(backbone="small_cnn", crop_shape=(76, 76)))
    box = {"min": -np.ones(7), "max": np.ones(7)}
    policy = Policy(cfg, spec, LinearNormalizer.from_stats(
        {"action": box, "proprio": {"min": -np.ones(9), "max": np.ones(9)}}, image_keys=spec.image_keys))
    chain_m = getattr(policy.head, "chain", None)
    if chain_m is not None:  # mark every block (and student) trained: the sampler runs the EMA copies
        chain_m.n_trained.fill_(chain_m.n_blocks)
        if distilled:
            chain_m.student_done.fill_(True)
    return policy.eval()


IMAGE_ROWS = [
    ("LFM ODE (midpoint×1)", lambda: image_policy("lfm"), None),
    ("LFM distilled", lambda: image_policy("lfm", distilled=True), None),
    ("LFM distilled, 2 blocks", lambda: image_policy("lfm", distilled=True, n_blocks=2), None),
    ("FM euler×N", lambda: image_policy("fm"), SolverConfig(method="euler", steps=4)),
    ("FM euler×10", lambda: image_policy("fm"), SolverConfig(method="euler", steps=10)),
    ("FM distilled", lambda: image_policy("fm", distilled=True), None),
    ("DDIM-10", lambda: image_policy("diffusion"), DiffusionSampler("ddim", 10)),
    ("DDPM-100", lambda: image_policy("diffusion"), DiffusionSampler("ddpm")),
    ("regression", lambda: image_policy("regression"), None),
]


def measure(rows, rounds: int, calls: int) -> dict[str, dict]:
    """{label: {"chunk_ms", "encode_ms", "sample_ms", "nfe", "ratio_to_ddim10", "params"}} (medians over rounds)."""
    times: dict[str, list[dict]] = {label: [] for label, *_ in rows}
    for _ in range(rounds):
        for label, policy, solver in rows:
            times[label].append(bench_policy(policy, solver=solver, calls=calls, warmup=10, throughput_batch=0))
    out = {}
    for label, runs in times.items():
        med = {k: statistics.median(r[k]["p50"] for r in runs) for k in ("encode_ms", "sample_ms", "chunk_ms")}
        out[label] = {**med, "chunk_ms_p95": statistics.median(r["chunk_ms"]["p95"] for r in runs),
                      "nfe": runs[0]["nfe"], "params": runs[0]["params"]}
    for r in out.values():
        r["ratio_to_ddim10"] = r["chunk_ms"] / out["DDIM-10"]["chunk_ms"]
    return out


def table(title: str, res: dict[str, dict]) -> str:
    lines = [f"\n{title}", "| row | NFE | params | encode ms | sample ms | chunk ms p50 | p95 | ÷ DDIM-10 |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in res.items():
        lines.append(f"| {label} | {r['nfe']} | {r['params'] / 1e6:.2f}M | {r['encode_ms']:.2f} | "
                     f"{r['sample_ms']:.2f} | {r['chunk_ms']:.2f} | {r['chunk_ms_p95']:.2f} | "
                     f"{r['ratio_to_ddim10']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="outputs/distill_table", help="distill_table output folder")
    p.add_argument("--ablations", default="outputs/lfm_ablations", help="lfm_ablations output folder")
    p.add_argument("--tasks", default="toy_point-obstacle,metaworld_pick-place-v3")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    results, text = {}, []
    for task in args.tasks.split(","):
        run = Path(args.runs) / task
        cache: dict[str, Policy] = {}
        rows = []
        for label, sub, solver in LOWDIM_ROWS:
            path = run / sub if sub != "two_blocks_distilled" else Path(args.ablations) / task / sub
            if not (path / "checkpoints" / "latest").exists():
                continue
            if sub not in cache:
                cache[sub] = Policy.load(path / "checkpoints" / "latest")
            rows.append((label, cache[sub], solver))
        results[task] = measure(rows, args.rounds, args.calls)
        text.append(table(f"{task} (low-dim, trained checkpoints)", results[task]))
        print(text[-1], flush=True)
    image_rows = [(label, make(), solver) for label, make, solver in IMAGE_ROWS]
    results["image_2cam_84"] = measure(image_rows, args.rounds, args.calls)
    text.append(table("two 84×84 cameras + 9-d proprio, small_cnn encoder, UNet 64-128-256", results["image_2cam_84"]))
    print(text[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        Path(args.out).with_suffix(".md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
