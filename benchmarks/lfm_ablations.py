"""What makes the LFM head strong: budget split, exact-OU sources, action noise, block count and width (#11).

Each variant trains the LFM head from the same config, data, seed and total step budget as the
``lfm`` row of ``distill_table.py`` (whose data and results it reuses as the baseline: run that first)
with one change, then rolls the teacher out at its shipped sampler (midpoint × 1 per block) and at the
accurate RK4 × 8 the students are distilled towards, on the same 50 evaluation seeds (from 100000);
``--distill`` also distills it with the defaults and rolls the students out. Results:
OUT/<task>/<variant>.json; ``--table`` prints the table with the baseline rows from ``--baseline``, and
a second one: distilled LFM with 2 blocks against the table's 4 blocks and FM on every task there.

Variants (N blocks, T total steps):
    free_heavy    the free block gets 70 % of the parameter budget and of the steps (``block_params``,
                  ``stage_steps``), the local blocks share the rest evenly
    ou_marginal   blocks learn between exact OU marginals of the data (``policy.head.chain.source``)
    action_noise  N(0, 0.02²) added to the normalized training actions (``policy.head.action_noise``)
    two_blocks    N = 2 blocks (each wider, the same total parameters)
    full_width    every block as wide as the FM network (``equal_total_params=false``: N× the parameters)

    python benchmarks/lfm_ablations.py --tasks toy/point-obstacle metaworld/push-v3 --out outputs/lfm_ablations
    python benchmarks/lfm_ablations.py --out outputs/lfm_ablations --table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from distill_table import CONFIGS, FAMILY_OVERRIDES, STEPS, TASK_ORDER, canonical, slug

from lfm_policy import Policy
from lfm_policy.distill import setup_distillation, write_summary
from lfm_policy.eval.rollout import EvalConfig, Evaluator
from lfm_policy.flow import SolverConfig
from lfm_policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
FREE_SHARE = 0.7


def variant_overrides(name: str, n_blocks: int, total_steps: int) -> list[str]:
    """The config overrides of one variant for a chain of ``n_blocks`` and ``total_steps``."""
    if name == "free_heavy":
        local = (1 - FREE_SHARE) / (n_blocks - 1)
        shares = [round(local, 4)] * (n_blocks - 1) + [FREE_SHARE]
        local_steps = int(total_steps * local)
        steps = [local_steps] * (n_blocks - 1) + [total_steps - local_steps * (n_blocks - 1)]
        return [f"policy.head.block_params={json.dumps(shares)}", f"stage_steps={json.dumps(steps)}"]
    if name == "ou_marginal":
        return ["policy.head.chain.source=ou_marginal"]
    if name == "action_noise":
        return ["policy.head.action_noise=0.02"]
    if name == "two_blocks":
        return ["policy.head.chain.n_blocks=2"]
    if name == "full_width":
        return ["policy.head.equal_total_params=false"]
    raise ValueError(f"unknown variant {name!r}")


VARIANTS = ("free_heavy", "ou_marginal", "action_noise", "two_blocks", "full_width")
SAMPLERS = {"mid×1": None, "RK4×8": SolverConfig(method="rk4", steps=8)}


def run(task: str, variant: str, args: argparse.Namespace) -> dict:
    family = task.split("/")[0]
    data = Path(args.baseline) / "data" / f"{slug(task)}.zarr"
    if not data.exists():
        raise SystemExit(f"{data}: no demonstrations; run benchmarks/distill_table.py --tasks {task} first")
    base = TrainConfig.from_json(ROOT / "configs" / CONFIGS[family]).with_overrides(FAMILY_OVERRIDES.get(family, []))
    total = STEPS.get(family, base.total_steps)
    out = Path(args.out) / slug(task)
    result_file = out / f"{variant}.json"
    res = json.loads(result_file.read_text()) if result_file.is_file() else {}  # a rerun adds what is missing
    overrides = [f"data.path={data}", f"out_dir={out / variant}", "policy.head.kind=lfm", f"total_steps={total}"]
    overrides += variant_overrides(variant, base.policy.head.chain.n_blocks, total)
    ckpt = out / variant / "checkpoints" / "latest"
    if not res:
        t0 = time.perf_counter()
        ckpt = train(base.with_overrides(overrides), progress=False, overwrite=True)
        res = {"task": task, "variant": variant, "overrides": overrides[3:], "train_s": time.perf_counter() - t0}
    policies = {label: (ckpt, s) for label, s in SAMPLERS.items()}
    if args.distill:
        dout = out / f"{variant}_distilled"
        if "distill_summary" not in res:
            dcfg = setup_distillation(ckpt, dout)
            path = train(dcfg, progress=False, overwrite=True)
            res["distill_summary"] = write_summary(Policy.load(path), dcfg)
        policies["distilled"] = (dout / "checkpoints" / "latest", None)
    evaluator = Evaluator(EvalConfig(task=task, n_envs=1))
    try:
        for label, (path, solver) in policies.items():
            if label in res:
                continue
            policy = Policy.load(path)
            summary = evaluator.run(policy, args.eval_episodes, seed_start=100000, solver=solver).summary()
            res[label] = {"success": summary["success_rate"], "ci95": summary["success_ci95"],
                          "nfe": policy.nfe(solver)}
            print(f"{task} {variant:<13} {label:<9} success={summary['success_rate']:.2f}", flush=True)
            result_file.write_text(json.dumps(res, indent=2))
    finally:
        evaluator.close()
    result_file.write_text(json.dumps(res, indent=2))
    return res


def table(out: Path, baseline: Path) -> str:
    """Markdown: success per task of each variant's teacher (mid×1 / RK4×8 [/ distilled])."""
    results = [json.loads(f.read_text()) for f in sorted(out.glob("*/*.json"))]
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    tasks = sorted({r["task"] for r in results}, key=lambda t: order.get(t, len(order)))
    base = {}
    for task in tasks:
        f = baseline / slug(task) / "results.json"
        rows = {r["row"]: r for r in json.loads(f.read_text())} if f.is_file() else {}
        base[task] = {"mid×1": rows.get("LFM teacher (midpoint×1)"), "RK4×8": rows.get("LFM teacher (RK4×8)"),
                      "distilled": rows.get("LFM distilled")}
    by = {(r["task"], r["variant"]): r for r in results}
    cell_names = ("mid×1", "RK4×8", "distilled")
    lines = ["| variant | " + " | ".join(t.split("/")[1].removesuffix("-v3") for t in tasks) + " |",
             "|---|" + "---|" * len(tasks),
             "| | " + " | ".join(" / ".join(cell_names) for _ in tasks) + " |"]

    def cell(entries: dict) -> str:
        return " / ".join(f"{entries[c]['success']:.2f}" if entries.get(c) else "–" for c in cell_names)

    lines.append("| baseline (push, equal shares) | " + " | ".join(cell(base[t]) for t in tasks) + " |")
    for v in VARIANTS:
        lines.append(f"| {v} | " + " | ".join(cell(by.get((t, v), {})) for t in tasks) + " |")
    return "\n".join(lines)


def two_block_table(out: Path, baseline: Path) -> str:
    """Markdown: distilled LFM with 4 blocks (the table) vs 2 blocks vs FM, on every task of ``baseline``.

    robosuite's configs already ship 2 blocks, so there the table's own rows are both.
    """
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    base = {json.loads(f.read_text())[0]["task"]: {r["row"]: r for r in json.loads(f.read_text())}
            for f in baseline.glob("*/results.json")}
    tasks = sorted(base, key=lambda t: order.get(t, len(order)))
    two = {}
    for t in tasks:
        f = out / slug(t) / "two_blocks.json"
        if f.is_file() and "distilled" in (r := json.loads(f.read_text())):
            two[t] = r
    lines = ["| row | NFE | " + " | ".join(t.split("/")[1].removesuffix("-v3") for t in tasks) + " | mean |",
             "|---|---|" + "---|" * (len(tasks) + 1)]

    def line(label: str, nfe: str, cells: list[float | None]) -> str:
        vals = [c for c in cells if c is not None]
        mean = f"{sum(vals) / len(vals):.3f}" if len(vals) == len(cells) else "–"
        return f"| {label} | {nfe} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + f" | {mean} |"

    def n_blocks(t: str) -> int:
        return 2 if t.startswith("robosuite") else 4

    def two_cell(t: str, label: str) -> float | None:
        if n_blocks(t) == 2:
            return base[t][{"mid×1": "LFM teacher (midpoint×1)", "RK4×8": "LFM teacher (RK4×8)",
                            "distilled": "LFM distilled"}[label]]["success"]
        return two[t][label]["success"] if t in two else None

    lines.append(line("LFM 4 blocks, distilled (the table; robosuite: 2)", "4 (2)",
                      [base[t]["LFM distilled"]["success"] for t in tasks]))
    lines.append(line("LFM 2 blocks, teacher RK4×8", "64", [two_cell(t, "RK4×8") for t in tasks]))
    lines.append(line("LFM 2 blocks, distilled", "2", [two_cell(t, "distilled") for t in tasks]))
    for row in ("FM euler×N (LFM's NFE)", "FM euler×10", "FM distilled"):
        cells = [next((r["success"] for k, r in base[t].items() if canonical(k) == row), None) for t in tasks]
        lines.append(line(row, "4 (2)" if "N" in row else ("10" if "10" in row else "1"), cells))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=[])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", default="outputs/lfm_ablations")
    p.add_argument("--baseline", default="outputs/distill_table", help="distill_table.py's --out")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--distill", action="store_true", help="also distill each variant and evaluate the students")
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.table:
        out, baseline = Path(args.out), Path(args.baseline)
        print(table(out, baseline) + "\n\n" + two_block_table(out, baseline))
        return
    torch.set_num_threads(1)
    for task in args.tasks:
        for variant in args.variants:
            run(task, variant, args)


if __name__ == "__main__":
    main()
