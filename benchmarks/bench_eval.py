"""Evaluation throughput: episodes/minute with 1 vs 2 env workers (batched policy inference).

For each task: collect a few expert demos, train a tiny LFM policy for a few steps (success does not
matter for speed, only that episodes run their full length), then time ``Evaluator.run`` with
``n_envs`` = 1 (in-process) and 2 (AsyncVectorEnv workers, forkserver). The main process uses one
torch thread. Env start-up is excluded (the evaluator is warmed up with one episode first).

    python benchmarks/bench_eval.py --out outputs/bench_eval           # ~5 min on 2 CPU cores
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
from lfm_policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def make_policy(task: str, out: Path, demos: int, size: str) -> Path:
    """A briefly trained policy: ``tiny`` (2-block LFM, 64-wide MLP) or ``config`` (the shipped config's net)."""
    data = out / (task.replace("/", "_") + ".zarr")
    if not data.exists():
        cli_main(["collect", "--task", task, "--episodes", str(demos), "--out", str(data), "--seed", "0",
                  "--no-progress"])
    base = "toy_lowdim.json" if task.startswith("toy/") else "metaworld_lowdim.json"
    over = [f"data.path={data}", "data.obs_keys=[]", f"out_dir={out / (task.replace('/', '_') + '_' + size)}",
            "val_every=100000", "checkpoint_every=100000", "data.val_ratio=0", "batch_size=32"]
    if size == "tiny":
        over += ["policy.head.chain.n_blocks=2", "policy.head.net.family=mlp", "policy.head.net.mlp.width=64",
                 "policy.head.net.mlp.depth=2", "total_steps=200"]
    else:
        over += ["total_steps=8"]
    return train(TrainConfig.from_json(ROOT / "configs" / base).with_overrides(over), progress=False,
                 overwrite=True)


def measure(policy: Policy, task: str, n_envs: int, episodes: int) -> dict:
    with Evaluator(EvalConfig(task=task, n_envs=n_envs)) as ev:
        ev.run(policy, episodes=1, seed_start=0)  # start the workers (not timed)
        t0 = time.perf_counter()
        res = ev.run(policy, episodes=episodes, seed_start=100000)
        wall = time.perf_counter() - t0
    s = res.summary()
    steps = sum(e.length for e in res.episodes)
    return {"task": task, "n_envs": n_envs, "episodes": episodes, "wall_s": wall,
            "episodes_per_min": 60 * episodes / wall,
            "env_steps_per_s": steps / wall, "mean_length": s["mean_length"], "success_rate": s["success_rate"],
            "chunk_ms_p50": s["chunk_latency_ms"]["p50"], "nfe": policy.nfe()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/bench_eval")
    p.add_argument("--toy-episodes", type=int, default=40)
    p.add_argument("--mw-task", default="metaworld/reach-v3")
    p.add_argument("--mw-episodes", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task, episodes, demos in [("toy/point-obstacle", args.toy_episodes, 20), (args.mw_task, args.mw_episodes, 5)]:
        for size in ("tiny", "config"):
            policy = Policy.load(make_policy(task, out, demos, size))
            for n_envs in (1, 2):
                row = {"policy": size, "params": policy.num_trained_params(),
                       **measure(policy, task, n_envs, episodes)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "bench_eval.json").write_text(json.dumps(rows, indent=2))
    print("\n| task | policy (params, NFE) | n_envs | episodes | mean length | episodes/min | env steps/s | "
          "chunk ms p50 (batch) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['policy']} ({r['params'] / 1e6:.2f} M, {r['nfe']}) | {r['n_envs']} | "
              f"{r['episodes']} | {r['mean_length']:.0f} | "
              f"{r['episodes_per_min']:.1f} | {r['env_steps_per_s']:.0f} | {r['chunk_ms_p50']:.2f} |")


if __name__ == "__main__":
    main()
