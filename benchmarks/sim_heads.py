"""Meta-World and robosuite (low-dim): success of lfm / fm / diffusion / regression heads.

For each task: collect the scripted expert's demos (seeds 0.., skipped when the buffer exists), train
every head from the family's shipped CPU config (``configs/<family>_lowdim_cpu.json``: the same data,
seed, trunk (ResidualMLP 256×3), batch and step budget; LFM splits the steps over its blocks; only
``policy.head.kind`` and ``--overrides`` change), then roll each policy out on the same evaluation
seeds (from 100000) with lfm_policy.eval's Evaluator. Flow heads are evaluated at 1 midpoint step per
block (LFM NFE 2 × blocks, FM NFE 2) and FM also at 4 (NFE 8); the diffusion head, trained once,
samples with DDIM-10 and with DDPM-100.
Results go to OUT/<task>/results.json after each task; ``--table`` prints the table of every task in OUT.

    python benchmarks/sim_heads.py --tasks metaworld/reach-v3 robosuite/Lift --out outputs/sim_heads
    python benchmarks/sim_heads.py --out outputs/sim_heads --table
    python benchmarks/sim_heads.py --out outputs/sim_lfm_n4 --heads lfm --tasks robosuite/Lift \
        --overrides policy.head.chain.n_blocks=4                                        # an LFM ablation
    python benchmarks/sim_heads.py --out outputs/sim_heads --table --merge "outputs/sim_lfm_n4= N=4"
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
from lfm_policy.heads import DiffusionSampler
from lfm_policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {"metaworld": 50, "robosuite": 100}
# (label, head kind, sampler or None for the checkpoint's own)
VARIANTS = {
    "lfm": [("lfm mid×1", SolverConfig(method="midpoint", steps=1))],
    "fm": [("fm mid×1", SolverConfig(method="midpoint", steps=1)),
           ("fm mid×4", SolverConfig(method="midpoint", steps=4))],
    "diffusion": [("DDIM-10", DiffusionSampler("ddim", 10)), ("DDPM-100", DiffusionSampler("ddpm"))],
    "regression": [("regression", None)],
}


def slug(task: str) -> str:
    """``metaworld/push-v3`` → ``metaworld_push-v3``."""
    return task.replace("/", "_")


def run_task(task: str, args: argparse.Namespace) -> list[dict]:
    """Collect, train every head, evaluate every variant; returns the rows."""
    family = task.split("/")[0]
    out = Path(args.out)
    data = out / "data" / f"{slug(task)}.zarr"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        cli_main(["collect", "--task", task, "--episodes", str(args.demos or DEMOS[family]), "--out", str(data),
                  "--seed", "0", "--no-progress"])
    rows = []
    evaluator = Evaluator(EvalConfig(task=task, n_envs=1))
    try:
        for kind in args.heads:
            run_dir = out / slug(task) / kind
            # the shipped CPU config of the family (ResidualMLP 256×3, batch 128, 6000 steps, lr 1e-3)
            cfg = TrainConfig.from_json(ROOT / "configs" / f"{family}_lowdim_cpu.json")
            sized = [f"{k}={v}" for k, v in (("policy.head.net.mlp.width", args.width),
                                             ("policy.head.net.mlp.depth", args.depth), ("total_steps", args.steps),
                                             ("batch_size", args.batch_size), ("optim.lr", args.lr)) if v is not None]
            cfg = cfg.with_overrides([f"data.path={data}", f"out_dir={run_dir}", f"policy.head.kind={kind}", *sized,
                                      *args.overrides])
            cfg = cfg.with_overrides([f"val_every={cfg.total_steps}", f"checkpoint_every={cfg.total_steps}"])
            ckpt = run_dir / "checkpoints" / "latest"
            train_s = float("nan")
            if not args.eval_only:
                t0 = time.perf_counter()
                ckpt = train(cfg, progress=False, overwrite=True)
                train_s = time.perf_counter() - t0
            policy = Policy.load(ckpt)
            val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            val_mse = next((r["val_action_mse"] for r in reversed(val) if "val_action_mse" in r), float("nan"))
            for label, sampler in VARIANTS[kind]:
                summary = evaluator.run(policy, args.eval_episodes, seed_start=100000, solver=sampler).summary()
                row = {"task": task, "head": kind, "variant": label, "nfe": policy.nfe(sampler),
                       "params": policy.num_trained_params(),
                       "success": summary["success_rate"], "ci95": summary["success_ci95"],
                       "episodes": summary["n_episodes"], "chunk_ms_p50": summary["chunk_latency_ms"]["p50"],
                       "train_s": train_s, "val_action_mse": val_mse, "eval_s": summary["wall_s"]}
                rows.append(row)
                print(f"{task} {label:<11} NFE={row['nfe']:<4} success={row['success']:.2f} "
                      f"chunk={row['chunk_ms_p50']:.2f} ms train={train_s:.0f} s eval={row['eval_s']:.0f} s",
                      flush=True)
    finally:
        evaluator.close()
    (out / slug(task)).mkdir(parents=True, exist_ok=True)
    (out / slug(task) / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def table(out: Path, merge: list[str] = ()) -> str:
    """Markdown table (success per task and variant, mean, NFE, latency, train s) of every results.json.

    ``merge``: extra ``DIR=SUFFIX`` result folders (e.g. an ablation run with ``--overrides``) whose
    variants get SUFFIX appended to their names.
    """
    sources = [(out, "")] + [(Path(m.split("=", 1)[0]), m.split("=", 1)[1]) for m in merge]
    rows = [{**r, "variant": r["variant"] + suffix} for d, suffix in sources
            for f in sorted(d.glob("*/results.json")) for r in json.loads(f.read_text())]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    short = [t.split("/")[1].removesuffix("-v3") for t in tasks]
    lines = ["| head (sampler) | NFE | " + " | ".join(short) + " | mean | chunk ms p50 | train s (mean) |",
             "|---|---|" + "---|" * (len(tasks) + 3)]
    for v in variants:
        by_task = {r["task"]: r for r in rows if r["variant"] == v}
        succ = [by_task[t]["success"] if t in by_task else float("nan") for t in tasks]
        any_r = next(iter(by_task.values()))
        lat = sum(r["chunk_ms_p50"] for r in by_task.values()) / len(by_task)
        tr = sum(r["train_s"] for r in by_task.values()) / len(by_task)
        lines.append(f"| {v} | {any_r['nfe']} | " + " | ".join(f"{s:.2f}" for s in succ)
                     + f" | {sum(succ) / len(succ):.2f} | {lat:.2f} | {tr:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=[])
    p.add_argument("--out", default="outputs/sim_heads")
    p.add_argument("--demos", type=int, default=None, help="demos per task (default: 50 Meta-World, 100 robosuite)")
    p.add_argument("--heads", nargs="+", default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="training steps per head (default: the config's, 6000)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's (128)")
    p.add_argument("--lr", type=float, default=None, help="default: the config's (1e-3)")
    p.add_argument("--width", type=int, default=None,
                   help="ResidualMLP width (default 256; LFM blocks are narrowed by equal_total_params)")
    p.add_argument("--depth", type=int, default=None, help="default: the config's (3)")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--overrides", nargs="*", default=[], help="extra key=value for every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-only", action="store_true", help="reuse the checkpoints in --out")
    p.add_argument("--table", action="store_true", help="print the table of the results in --out and exit")
    p.add_argument("--merge", nargs="*", default=[], metavar="DIR=SUFFIX",
                   help="with --table: also the results in DIR, their variant names suffixed with SUFFIX")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.out), args.merge))
        return
    torch.set_num_threads(args.threads)
    for task in args.tasks:
        run_task(task, args)


if __name__ == "__main__":
    main()
