"""Demonstration-collection speed: episodes/s per task family, low-dim and images, 1 vs 2 workers.

Each row runs ``lfm_policy.envs.collect.collect`` end to end (worker start, rollouts, zarr writing)
into a temporary directory and reports:

* wall s / ep/s: seconds of the ``collect`` call and episodes (kept + discarded) per wall second —
  what ``lfm-policy collect`` costs on this machine *at the load shown* (last column, 1-min load avg);
* rollout CPU ms/ep (and per step): CPU time of env + expert per episode, measured inside the process
  that ran it (all its threads) — nearly load-independent; 1000 / (ms/ep) is the episodes/s of one
  idle core;
* other CPU ms/ep: CPU time of the main process per written episode besides the rollouts: zarr
  writing, receiving episodes from workers and, with 1 worker, creating the env;
* success: kept / attempted.

Usage::

    .venv/bin/python benchmarks/bench_collect.py                 # full suite (~10 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_collect.py --quick         # episode counts / 5
    .venv/bin/python benchmarks/bench_collect.py --suite metaworld-goal   # 100 Meta-World episodes
    .venv/bin/python benchmarks/bench_collect.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from lfm_policy.envs.collect import CollectConfig, collect

# (task, images, episodes, workers) per suite
SUITES: dict[str, list[tuple[str, bool, int, int]]] = {
    "toy": [
        ("toy/point-obstacle", False, 100, 1),
        ("toy/point-obstacle", False, 100, 2),
        ("toy/point-obstacle", True, 100, 1),
        ("toy/point-obstacle", True, 100, 2),
    ],
    "metaworld": [
        (f"metaworld/{t}", images, n, w)
        for t in ("reach-v3", "pick-place-v3", "door-open-v3")
        for images, n in ((False, 40), (True, 10))
        for w in (1, 2)
    ],
    "metaworld-goal": [("metaworld/pick-place-v3", False, 100, 2), ("metaworld/pick-place-v3", False, 100, 1)],
    "robosuite": [
        (f"robosuite/{t}", images, n, w)
        for t in ("Lift", "PickPlaceCan", "NutAssemblySquare")
        for images, n in ((False, 6), (True, 4))
        for w in (1, 2)
    ],
}
SUITES["all"] = SUITES["toy"] + SUITES["metaworld"] + SUITES["metaworld-goal"][:1] + SUITES["robosuite"]

COLUMNS = [
    ("obs", "obs"), ("workers", "workers"), ("episodes", "episodes"), ("mean len", "mean_len"),
    ("success", "success"), ("wall s", "wall_s"), ("ep/s", "episodes_per_s"),
    ("rollout CPU ms/ep", "rollout_cpu_ms_per_episode"), ("rollout CPU ms/step", "rollout_cpu_ms_per_step"),
    ("other CPU ms/ep", "other_cpu_ms_per_episode"), ("load", "load_avg"),
]  # fmt: skip


def run_one(task: str, images: bool, episodes: int, workers: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CollectConfig(task=task, n_episodes=episodes, seed=seed, images=images, workers=workers)
        start, cpu_start = time.perf_counter(), time.process_time()
        res = collect(cfg, Path(tmp) / "bench.zarr")
        wall, main_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    attempts = res.n_kept + res.n_discarded
    other_cpu = main_cpu - (res.rollout_cpu_seconds if workers == 1 else 0.0)
    return {
        "task": task,
        "obs": "images" if images else "low-dim",
        "workers": workers,
        "episodes": res.n_kept,
        "attempts": attempts,
        "steps": res.n_steps,
        "wall_s": round(wall, 2),
        "episodes_per_s": round(attempts / wall, 2),
        "rollout_cpu_ms_per_episode": round(1000 * res.rollout_cpu_seconds / attempts, 1),
        "rollout_cpu_ms_per_step": round(1000 * res.rollout_cpu_seconds / max(res.n_steps, 1), 2),
        "other_cpu_ms_per_episode": round(1000 * other_cpu / max(res.n_kept, 1), 1),
        "success": round(res.n_kept / attempts, 3),
        "mean_len": round(res.n_steps / max(res.n_kept, 1), 1),
        "load_avg": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="all")
    parser.add_argument("--quick", action="store_true", help="divide episode counts by 5 (at least 2)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    print(f"# bench_collect on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    print("| task | " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    rows = []
    for task, images, n, workers in SUITES[args.suite]:
        row = run_one(task, images, max(2, n // 5) if args.quick else n, workers, args.seed)
        rows.append(row)
        print(f"| {task} | " + " | ".join(str(row[k]) for _, k in COLUMNS) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
