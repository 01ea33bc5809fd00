"""Chunk latency of every suite row, measured again in one quiet process with the rows interleaved.

``suite.py`` times each row right after evaluating it, while its trainings (and perhaps another
suite process) share the CPU, so two rows with the same network and sampler can differ by 1.5× there.
Latency does not depend on the weights (fixed-step samplers, dense networks), so this script builds
every row's network from the cell's config, the same way the suite does (two demonstrations, a few
optimizer steps, a few distillation steps), and times all rows of a cell in this one process: ``--rounds``
rounds, every row ``--reps`` calls per round (after warm-up), the median of the rounds' p50s. It writes
``ROWS/latency/<cell>.json`` (``{row label: ms}`` with the machine), which ``suite_report.py`` uses in
place of the in-run times, and then rewrites the page.

    python benchmarks/suite_latency.py --suite cpu      # ~1 min per cell; run it with nothing else on the CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_table import first_window, latency_ms  # noqa: E402
from suite import HEADS, ROOT, train_config  # noqa: E402
from suite_plan import SUITES, Budget, Cell, config_name, methods  # noqa: E402
from suite_report import machine, write_report  # noqa: E402

from lfm_policy import Policy  # noqa: E402
from lfm_policy.cli import main as cli_main  # noqa: E402
from lfm_policy.config import atomic_write_text  # noqa: E402
from lfm_policy.distill import setup_distillation  # noqa: E402
from lfm_policy.train import TrainConfig, train  # noqa: E402

#: The networks and samplers do not depend on the step budget or its split: ``lfm_steps`` and ``lfm_free`` rows
#: time the ``lfm`` network.
SAME_NETWORK = {"lfm_steps": "lfm", "lfm_free": "lfm"}


def build(cell: Cell, budget: Budget, work: Path) -> dict[tuple[str, bool], Path]:
    """Checkpoints with every row's network (a few optimizer steps each: only their shape matters)."""
    data = work / "data.zarr"
    if not data.exists():
        cli_main(["collect", "--task", cell.task, "--episodes", "2", "--out", str(data), "--seed", "0",
                  "--no-progress", *(["--images"] if cell.images else [])])  # fmt: skip
    n_blocks = TrainConfig.from_json(ROOT / "configs" / config_name(cell)).policy.head.chain.n_blocks
    few = ["val_every=1000", "checkpoint_every=1000", "data.val_ratio=0", "batch_size=8"]  # shape only
    tiny = Budget(budget.demos, budget.eval_episodes, {cell.family: 2 * n_blocks}, 2, 1)
    students = {m.head for m in methods(n_blocks) if m.distilled}
    ckpts = {}
    for kind in HEADS:
        if kind in SAME_NETWORK:
            continue
        run = work / kind
        if not (run / "checkpoints" / "latest").exists():
            train(train_config(cell, tiny, data, run, kind, 0, few), progress=False, overwrite=True)
        ckpts[(kind, False)] = run / "checkpoints" / "latest"
        if kind in students:
            dout = work / f"{kind}_distilled"
            if not (dout / "checkpoints" / "latest").exists():
                train(setup_distillation(ckpts[(kind, False)], dout, steps=2), progress=False, overwrite=True)
            ckpts[(kind, True)] = dout / "checkpoints" / "latest"
    return ckpts


def time_rows(cell: Cell, ckpts: dict[tuple[str, bool], Path], data: Path, reps: int, rounds: int) -> dict[str, float]:
    """``{row label: ms}``: every row of the cell timed in turn, ``rounds`` times; the median round."""
    policies = {key: Policy.load(path) for key, path in ckpts.items()}
    obs = first_window(data, policies[("lfm", False)])
    plan = methods(policies[("lfm", False)].head.chain.n_blocks)
    times: dict[str, list[float]] = {m.label: [] for m in plan}
    for _ in range(rounds):
        for m in plan:
            policy = policies[(SAME_NETWORK.get(m.head, m.head), m.distilled)]
            times[m.label].append(latency_ms(policy, obs, m.sampler, reps))
    return {label: statistics.median(v) for label, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    p.add_argument("--rows", default=None, help="the suite's rows (default benchmarks/results/<suite>)")
    p.add_argument("--out", default=None, help="work directory (default outputs/suite_<suite>_latency)")
    p.add_argument("--results", default=None, help="results page to rewrite (default docs/results.md)")
    p.add_argument("--readme", default=None, help="README with the headline block (default README.md)")
    p.add_argument("--reps", type=int, default=100, help="timed calls per row and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cells, budget = SUITES[args.suite]
    rows = Path(args.rows or ROOT / "benchmarks" / "results" / args.suite)
    out = Path(args.out or f"outputs/suite_{args.suite}_latency")
    seen = set()
    for cell in cells:
        key = (cell.task, cell.images)
        if key in seen or not (rows / cell.key).is_dir():  # only cells the suite has rows for
            continue
        seen.add(key)
        ckpts = build(cell, budget, out / cell.key)
        ms = time_rows(cell, ckpts, out / cell.key / "data.zarr", args.reps, args.rounds)
        record = {"task": cell.task, "images": cell.images, "ms": ms, "reps": args.reps, "rounds": args.rounds,
                  "machine": machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")}
        atomic_write_text(rows / "latency" / f"{cell.key}.json", json.dumps(record, indent=2))
        print(cell.task, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    results = Path(args.results or ROOT / "docs" / "results.md")
    readme = Path(args.readme) if args.readme else ROOT / "README.md"
    write_report(rows, args.suite, cells, budget, results, readme)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
