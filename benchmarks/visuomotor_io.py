"""What pixels cost outside the network: rendering while collecting/evaluating, and the image loader.

1. Env step cost with cameras (``docs/visuomotor.md``): the scripted expert runs ``--episodes`` episodes
   per row, one process, and the row reports ms per env step (reset excluded), the share of it spent
   beyond the low-dim step (render + copy) and episodes per minute. Rows: each image config's task
   at the policy's resolution and cameras (what ``eval`` now makes by itself), at the task's default
   84 px (64 px toy) with every camera, and low-dim.
2. Loader: batches/s of the training loader (``SequenceDataset.make_loader``, To = 2, H = 16,
   batch 64) on each image config's dataset, and the ``images_to_float`` conversion — next to the
   trainer's steps/s, which ``metrics.jsonl`` of a run records.

    MUJOCO_GL=egl OMP_NUM_THREADS=1 .venv/bin/python benchmarks/visuomotor_io.py [--episodes 5] \
        [--datasets data/toy_images.zarr data/metaworld_button-press-topdown-v3_images.zarr ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

ROWS: list[tuple[str, str, bool, dict[str, Any]]] = [
    # (label, task, images, env kwargs)
    ("toy low-dim", "toy/point-obstacle", False, {}),
    ("toy 64 px (default)", "toy/point-obstacle", True, {}),
    ("toy 32 px (toy_image_cpu)", "toy/point-obstacle", True, {"image_size": 32}),
    ("button-press low-dim", "metaworld/button-press-topdown-v3", False, {}),
    ("button-press corner3 84 px (default size)", "metaworld/button-press-topdown-v3", True, {"camera": "corner3"}),
    ("button-press corner3 48 px (metaworld_image_cpu)", "metaworld/button-press-topdown-v3", True,
     {"camera": "corner3", "image_size": 48}),
    ("Lift low-dim", "robosuite/Lift", False, {"hard_reset": False}),
    ("Lift 2 cams 84 px (default)", "robosuite/Lift", True, {"hard_reset": False}),
    ("Lift 2 cams 48 px (robosuite_image_cpu)", "robosuite/Lift", True, {"hard_reset": False, "image_size": 48}),
    ("Lift agentview only 48 px", "robosuite/Lift", True,
     {"hard_reset": False, "image_size": 48, "cameras": ["agentview"]}),
]


def env_row(task: str, images: bool, kwargs: dict[str, Any], episodes: int) -> dict[str, Any]:
    """ms per expert step and episodes per minute (resets excluded from the step time)."""
    from lfm_policy.envs.registry import make_env, make_expert
    from lfm_policy.envs.rollout import _reset_expert

    env = make_env(task, images=images, **kwargs)
    expert = make_expert(task, env)
    steps, step_s, t0 = 0, 0.0, time.perf_counter()
    try:
        for seed in range(episodes):
            obs, _ = env.reset(seed=seed)
            _reset_expert(expert, seed)
            done = False
            while not done:
                action = expert.act(obs)
                t = time.perf_counter()
                obs, _, terminated, truncated, _ = env.step(action)
                step_s += time.perf_counter() - t
                steps += 1
                done = terminated or truncated
    finally:
        env.close()
    wall = time.perf_counter() - t0
    return {"task": task, "images": images, "env_kwargs": kwargs, "episodes": episodes, "steps": steps,
            "step_ms": 1e3 * step_s / steps, "episodes_per_min": 60 * episodes / wall}


def loader_row(path: str, batches: int) -> dict[str, Any]:
    """Training-loader batches/s (uint8 images, ``make_loader``, in-process) and the float conversion."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_dataloader import time_loader

    from lfm_policy.datasets.replay_buffer import ReplayBuffer
    from lfm_policy.datasets.torch_dataset import SequenceDataset

    keys = [k for k in ReplayBuffer.open(path).keys if k != "action"]
    ds = SequenceDataset(path, obs_keys=keys, n_obs_steps=2, horizon=16, n_action_steps=8)
    r = time_loader(ds, "batched", 0, batches, warmup=3)
    return {"dataset": path, "image_keys": list(ds.image_keys),
            "image_shapes": {k: list(ds.obs_shapes[k]) for k in ds.image_keys}, **r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--rows", nargs="*", default=None, help="only rows whose label contains one of these")
    ap.add_argument("--datasets", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"env": [], "loader": []}
    base: dict[str, float] = {}
    print("| row | ms per step | beyond low-dim | episodes/min |\n|---|---|---|---|")
    for label, task, images, kwargs in ROWS:
        if args.rows and not any(r in label for r in args.rows):
            continue
        r = env_row(task, images, kwargs, args.episodes)
        r["label"] = label
        if not images:
            base[task] = r["step_ms"]
        extra = f"{r['step_ms'] - base[task]:+.2f} ms" if images and task in base else "-"
        print(f"| {label} | {r['step_ms']:.2f} | {extra} | {r['episodes_per_min']:.0f} |", flush=True)
        out["env"].append(r)
    if args.datasets:
        print("\n| dataset | cameras | batches/s (batch 64) | to float ms |\n|---|---|---|---|")
    for path in args.datasets:
        r = loader_row(path, args.batches)
        cams = ", ".join(f"{k} {'x'.join(map(str, s[1:]))}" for k, s in r["image_shapes"].items())
        print(f"| {path} | {cams} | {r['batches_per_s']:.0f} | {r['images_to_float_cpu_ms']:.2f} |", flush=True)
        out["loader"].append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
