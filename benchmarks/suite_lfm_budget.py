"""Why LFM trails FM in the suite: is it the per-block budget? One suite cell, LFM with more per block.

In the suite every head gets the same total parameters and optimizer steps, so each of LFM's N blocks
has 1/N of FM's parameters (``equal_total_params``: widths × 1/sqrt(N)) and 1/N of its steps (one stage
per block). This trains, on the suite's own demonstrations of one cell and with its config and seed:

  lfm ×2 params   ``policy.head.equal_total_params=false``: every block as wide as FM's network
  lfm ×2 steps    ``total_steps`` × N: every block trains as many steps as FM's network
  lfm ×2 both     both
  lfm steps 1:3   the suite's steps, split 1 : 3 between the first block and the free last one
  lfm steps 3:1   split 3 : 1
  lfm 1:3 both    the steps split 1 : 3 and the parameters too (``policy.head.block_params=[0.25,0.75]``:
                  the same total, the free block 3 × as wide a share)

and evaluates each on the suite's episode seeds with the suite's two LFM samplers (the config's
midpoint × 1 per block, and Euler × 10 // N per block), next to the suite's rows for that cell. With
``--distill`` each variant is also distilled the suite's way (one-step students, the suite's
distillation steps) and its student evaluated (NFE N): does a better teacher make a better student?
``--students`` adds distillations that differ from the suite's in one setting each (see ``STUDENTS``):
is it the student's training that loses the teacher's modes?

    python benchmarks/suite_lfm_budget.py --task metaworld/reach-v3-detour   # after the suite ran the cell
    python benchmarks/suite_lfm_budget.py --task metaworld/reach-v3-detour --variants "lfm ×2 steps" --distill
    python benchmarks/suite_lfm_budget.py --task metaworld/button-press-topdown-v3-detour \
        --variants "lfm ×2 steps" --distill --students suite "×3 distill steps" teacher_path "euler×2 per block"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import ROOT, _complete, demos, train_config  # noqa: E402
from suite_plan import SUITES, config_name  # noqa: E402

from lfm_policy import Policy  # noqa: E402
from lfm_policy.distill import setup_distillation, write_summary  # noqa: E402
from lfm_policy.eval.rollout import EvalConfig, Evaluator  # noqa: E402
from lfm_policy.flow import SolverConfig  # noqa: E402
from lfm_policy.train import TrainConfig, train  # noqa: E402

VARIANTS = {"lfm (suite)": [], "lfm steps 1:3": ["SPLIT 1 3"], "lfm steps 3:1": ["SPLIT 3 1"],
            "lfm 1:3 both": ["SPLIT 1 3", "policy.head.block_params=[0.25,0.75]"],
            "lfm ×2 params": ["policy.head.equal_total_params=false"], "lfm ×2 steps": ["STEPS"],
            "lfm ×2 both": ["policy.head.equal_total_params=false", "STEPS"]}
# Distillations: keyword arguments of ``setup_distillation`` on top of the suite's (``steps`` as a multiple).
STUDENTS = {"suite": {}, "×3 distill steps": {"steps": 3}, "teacher_path": {"inputs": "teacher_path"},
            "euler×2 per block": {"block_steps": 2}}


def student_key(variant: str, student: str) -> str:
    """Record key of a variant's distilled student (the suite's way keeps the original key)."""
    return f"{variant}, distilled" + ("" if student == "suite" else f" ({student})")


def override(option: str, steps: int, n: int) -> str:
    """A variant's option as a config override (``STEPS``: N × the steps; ``SPLIT a b``: the suite's steps
    split a : b between the first block and the free last one, for a 2-block chain)."""
    if option == "STEPS":
        return f"total_steps={steps * n}"
    if option.startswith("SPLIT"):
        a, b = (int(x) for x in option.split()[1:])
        if n != 2:
            raise SystemExit(f"{option}: the split variants are for 2-block chains (this config has {n})")
        first = steps * a // (a + b)
        return f"stage_steps=[{first},{steps - first}]"
    return option


def safe(name: str) -> str:
    """A variant's name as a directory name."""
    return name.replace(" ", "_").replace("×", "x").replace(":", "-").replace("(", "").replace(")", "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="cpu")
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="work directory (default outputs/suite_<suite>)")
    p.add_argument("--variants", nargs="*", default=["lfm ×2 params", "lfm ×2 steps", "lfm ×2 both"],
                   choices=list(VARIANTS))
    p.add_argument("--distill", action="store_true", help="also distill each variant and evaluate its student")
    p.add_argument("--students", nargs="*", default=["suite"], choices=list(STUDENTS),
                   help="with --distill: which distillations of each variant (default the suite's)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cells, budget = SUITES[args.suite]
    cell = next(c for c in cells if c.task == args.task)
    out = Path(args.out or f"outputs/suite_{args.suite}")
    data = demos(cell, budget, out)  # the suite's demonstrations of the cell (collected if missing)
    base = TrainConfig.from_json(ROOT / "configs" / config_name(cell))
    n = base.policy.head.chain.n_blocks
    steps = budget.steps.get(cell.family) or base.total_steps
    results = Path(__file__).with_name("results") / args.suite / "lfm_budget" / f"{cell.key}_seed{args.seed}.json"
    record = json.loads(results.read_text()) if results.is_file() else {}
    samplers = {"midpoint×1 per block": None, f"euler×{10 // n} per block": SolverConfig("euler", steps=10 // n)}
    with Evaluator(EvalConfig(task=cell.task, n_envs=1)) as ev:
        for name in args.variants:
            students = args.students if args.distill else []
            keys = [*(f"{name}, {label}" for label in samplers), *(student_key(name, st) for st in students)]
            if all(k in record for k in keys):  # measured before: nothing to train
                continue
            extra = [override(o, steps, n) for o in VARIANTS[name]]
            run = out / cell.key / f"seed{args.seed}" / "lfm_budget" / safe(name)
            cfg = train_config(cell, budget, data, run, "lfm", args.seed, extra)
            t0 = time.perf_counter()
            if not _complete(run):
                train(cfg, progress=False, overwrite=True)
            train_s = time.perf_counter() - t0
            teacher = Policy.load(run / "checkpoints" / "latest")
            policies = {label: (teacher, solver) for label, solver in samplers.items()}
            distill_s = {}
            for st in students:
                label = student_key(name, st).split(", ", 1)[1]
                if f"{name}, {label}" in record:
                    continue
                kw = dict(STUDENTS[st])
                kw["steps"] = budget.distill_steps * kw.get("steps", 1)
                dout = run.with_name(run.name + "_distilled" + ("" if st == "suite" else "_" + safe(st)))
                t0 = time.perf_counter()
                if not (dout / "distill_summary.json").is_file():
                    dcfg = setup_distillation(run / "checkpoints" / "latest", dout, **kw)
                    write_summary(Policy.load(train(dcfg, progress=False, overwrite=True)), dcfg)
                policies[label] = (Policy.load(dout / "checkpoints" / "latest"), None)
                distill_s[label] = time.perf_counter() - t0
            for label, (policy, solver) in policies.items():
                key = f"{name}, {label}"
                if key in record:
                    continue
                s = ev.run(policy, budget.eval_episodes, seed_start=100000, solver=solver).summary()
                record[key] = {"successes": s["n_success"], "episodes": s["n_episodes"],
                               "collisions": s["n_collisions"], "nfe": policy.nfe(solver),
                               "params": policy.num_trained_params(), "overrides": extra, "train_s": train_s,
                               **({"distill_s": distill_s[label]} if label in distill_s else {})}
                print(f"{key:<44} {s['n_success']}/{s['n_episodes']} collisions {s['n_collisions']}", flush=True)
                results.parent.mkdir(parents=True, exist_ok=True)
                results.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
