"""The benchmark suite: from nothing to docs/results.md — demos, every method, paired evaluation, plots.

    python benchmarks/suite.py --suite smoke                   # minutes: the whole pipeline, tiny budgets
    python benchmarks/suite.py --suite cpu                     # the low-dim suite (hours; resumable)
    python benchmarks/suite.py --suite cpu --tasks robosuite/Lift-detour   # some cells only
    python benchmarks/suite.py --suite cpu --report            # rewrite the results page from what ran

For every cell of the suite (``suite_plan.py``): collect the scripted expert's demonstrations (seeds
0.., once per task), train every head from the family's shipped config for each training seed (only
``policy.head.kind`` and ``seed`` change), distill the LFM and FM teachers to one-step students, then
evaluate every row on episode seeds 100000.. (the same for every row and training seed) and time its
chunk at batch 1 (one torch thread, after warm-up). Every finished row is a small JSON file under
``ROWS/<cell>/seed<k>/`` (``--rows``, default ``benchmarks/results/<suite>``, kept in git so the page
can always be rebuilt and a later session continues the suite), every finished training a
``status.json`` in the work directory (``--out``, default ``outputs/suite_<suite>``): a rerun after a
kill (or with more cells, seeds or episodes) continues where it stopped. Each row records the
``config_sha`` it was made from (:func:`row_sha`: shipped config file, overrides, demos, distillation
steps); a row whose hash no longer matches (a shipped config or budget changed) is measured again, from
a new training. After each cell the results
page (``--results``, default docs/results.md) and its plots are rewritten from every row in ROWS.

The multimodal cells (toy, ``-detour`` tasks) train low-dim policies that also read the keep-out
column (``keepout``), which changes where the hand may go.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_table import first_window, latency_ms  # noqa: E402
from suite_plan import SUITES, Budget, Cell, Method, config_name, methods  # noqa: E402
from suite_report import write_report  # noqa: E402

from lfm_policy import Policy  # noqa: E402
from lfm_policy.cli import main as cli_main  # noqa: E402
from lfm_policy.config import atomic_write_text  # noqa: E402
from lfm_policy.distill import setup_distillation, write_summary  # noqa: E402
from lfm_policy.envs.registry import DETOUR_TASKS  # noqa: E402
from lfm_policy.eval.metrics import mode_coverage  # noqa: E402
from lfm_policy.eval.rollout import EvalConfig, Evaluator  # noqa: E402
from lfm_policy.train import TrainConfig, train  # noqa: E402
from lfm_policy.train_run import RUN_CONFIG  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Trainings per cell and seed: the four heads, then LFM with N × the steps (``lfm_steps``), LFM whose
#: free block trains 3 × the steps of each other block (``lfm_free``, same total) and LFM whose free block
#: also holds 3 × the parameters of each other block (``lfm_free_params``, same totals).
#: ``LFM_VARIANTS`` are LFM trainings with the config's head, their budget or its split changed.
LFM_VARIANTS = ("lfm_steps", "lfm_free", "lfm_free_params")
HEADS = ("lfm", "fm", "diffusion", "regression", *LFM_VARIANTS)
#: ``lfm_free`` / ``lfm_free_params``: the free block's steps (and parameters) relative to each other block's.
FREE_WEIGHT = 3


def demos(cell: Cell, budget: Budget, out: Path) -> Path:
    """The cell's demonstrations (collected once per task and observation kind)."""
    data = out / "data" / f"{cell.key}.zarr"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        cli_main(["collect", "--task", cell.task, "--episodes", str(budget.demos[cell.family]), "--out", str(data),
                  "--seed", "0", "--no-progress", *(["--images"] if cell.images else [])])  # fmt: skip
    return data


def demo_modes(data: Path) -> dict[str, int]:
    """The dataset's mode counts (root attr ``modes``; empty for unimodal tasks)."""
    import zarr

    return dict(zarr.open_group(str(data), mode="r").attrs.get("modes", {}))


def train_overrides(cell: Cell, budget: Budget, kind: str, seed: int, extra: list[str]) -> list[str]:
    """The overrides of the shipped config for one training of the cell, without its paths (``lfm_steps``:
    LFM, N × the steps; ``lfm_free``: LFM, the free block :data:`FREE_WEIGHT` × each other block's steps;
    ``lfm_free_params``: and as many times each other block's parameters)."""
    base = TrainConfig.from_json(ROOT / "configs" / config_name(cell))
    head = "lfm" if kind in LFM_VARIANTS else kind
    over = [f"policy.head.kind={head}", f"seed={seed}"]
    steps = budget.steps.get(cell.family) or base.total_steps
    n = base.policy.head.chain.n_blocks
    if kind == "lfm_steps":  # every block trains as many steps as the other heads' one network
        steps *= n
    free_heavy = json.dumps([*[1 / (n - 1 + FREE_WEIGHT)] * (n - 1), FREE_WEIGHT / (n - 1 + FREE_WEIGHT)])
    if kind in ("lfm_free", "lfm_free_params"):  # shares (1, ..., 1, FREE_WEIGHT) / (N - 1 + FREE_WEIGHT)
        over.append(f"policy.head.block_steps={free_heavy}")
    if kind == "lfm_free_params":  # the same shares of the parameter budget (equal_total_params)
        over.append(f"policy.head.block_params={free_heavy}")
    if steps != base.total_steps:
        over.append(f"total_steps={steps}")
    if cell.task in DETOUR_TASKS:
        over.append("data.obs_keys=" + json.dumps([*base.data.obs_keys, "keepout"]))
    return [*over, *budget.overrides, *extra]


def train_config(cell: Cell, budget: Budget, data: Path, run: Path, kind: str, seed: int,
                 extra: list[str]) -> TrainConfig:
    """The shipped config with this cell's data, head, seed and budget (see :func:`train_overrides`)."""
    base = TrainConfig.from_json(ROOT / "configs" / config_name(cell))
    over = train_overrides(cell, budget, kind, seed, extra)
    return base.with_overrides([f"data.path={data}", f"out_dir={run}", *over])


def row_sha(cell: Cell, budget: Budget, kind: str, seed: int, extra: list[str], distilled: bool) -> str:
    """What a row is made from: the shipped config file as written (less its ``about`` text), the suite's
    overrides of it for the row's training, the number of demonstrations and, for a student, its
    distillation steps per block.

    A shipped config, budget or plan that changes after a row was measured changes this hash, so the suite
    measures the row again instead of mixing two configs in one table (fields added to the config classes
    with defaults do not change it).
    """
    shipped = json.loads((ROOT / "configs" / config_name(cell)).read_text())
    shipped.pop("about", None)
    d = {"config": shipped, "overrides": train_overrides(cell, budget, kind, seed, extra),
         "demos": budget.demos[cell.family], "distill_steps": budget.distill_steps if distilled else None}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _complete(run: Path) -> bool:
    status = run / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "complete"


def _without_paths(config: TrainConfig) -> dict:
    d = config.to_dict()
    d.pop("out_dir")
    d["data"].pop("path")
    return d


def _trained_with(run: Path, config: TrainConfig) -> bool:
    """Whether ``run`` finished training ``config`` (its saved config equal but for the paths)."""
    saved = run / RUN_CONFIG
    return _complete(run) and saved.is_file() and _without_paths(TrainConfig.from_json(saved)) == _without_paths(config)


class Deadline:
    """``--max-minutes``: stop between units of work (a training, a distillation, a row) once it has passed."""

    def __init__(self, minutes: float | None):
        self.end = None if minutes is None else time.monotonic() + 60 * minutes

    def check(self) -> None:
        """Raise :class:`PartDone` when the time is up (everything finished so far is kept)."""
        if self.end is not None and time.monotonic() > self.end:
            raise PartDone


class PartDone(Exception):
    """The part's time is up; a rerun continues."""


deadline = Deadline(None)


def _train_or_resume(config: TrainConfig) -> bool:
    """Continue an interrupted run of the same config from its last checkpoint, else train from scratch."""
    from lfm_policy.errors import LfmPolicyError

    if (Path(config.out_dir) / "checkpoints" / "latest").exists():
        try:
            train(config, progress=False, resume=True)
            return True
        except LfmPolicyError as e:  # another config (or no usable checkpoint): start over
            if "resume" not in str(e):
                raise
    train(config, progress=False, overwrite=True)
    return False


def train_heads(cell: Cell, budget: Budget, data: Path, out: Path, seed: int, extra: list[str],
                needs: set[tuple[str, bool]]) -> dict:
    """Train (or find) the heads and students in ``needs`` ((head, distilled) pairs); return checkpoints and wall times.

    A student needs its teacher, so ``("lfm", True)`` trains (or finds) ``lfm`` too. A finished training
    of another config (the shipped config changed since) is trained again, and so are its students.
    """
    ckpts, timing = {}, {}
    for kind in HEADS:
        if not any(h == kind for h, _ in needs):
            continue
        run = out / kind
        timing_file = run / "suite_timing.json"
        config = train_config(cell, budget, data, run, kind, seed, extra)
        sha = row_sha(cell, budget, kind, seed, extra, False)
        trained_now = not _trained_with(run, config)
        if trained_now:
            deadline.check()
            t0 = time.perf_counter()
            resumed = _train_or_resume(config)
            atomic_write_text(timing_file, json.dumps({"train_s": time.perf_counter() - t0, "resumed": resumed}))
        ckpts[(kind, False)] = run / "checkpoints" / "latest"
        timing[kind] = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        if timing[kind].get("resumed"):  # only the part after the restart was timed: no training wall time
            timing[kind] = {**timing[kind], "train_s": None}
        if (kind, True) not in needs:
            continue
        dout = out / f"{kind}_distilled"
        student_timing = dout / "suite_timing.json"
        teacher_of = json.loads(student_timing.read_text()).get("teacher_sha") if student_timing.is_file() else None
        if trained_now or not (dout / "distill_summary.json").is_file() or teacher_of != sha:  # a new teacher
            deadline.check()
            t0 = time.perf_counter()
            dcfg = setup_distillation(ckpts[(kind, False)], dout, steps=budget.distill_steps)
            write_summary(Policy.load(train(dcfg, progress=False, overwrite=True)), dcfg)
            atomic_write_text(student_timing, json.dumps({"distill_s": time.perf_counter() - t0, "teacher_sha": sha}))
        ckpts[(kind, True)] = dout / "checkpoints" / "latest"
        summary = json.loads((dout / "distill_summary.json").read_text())
        timing[f"{kind}_distilled"] = {**json.loads(student_timing.read_text()),
                                       "chunk_rms_vs_teacher": summary.get("chunk_rms_distilled")}
    return {"ckpts": ckpts, "timing": timing}


def _finished_row(path: Path, method: Method, budget: Budget, sha: str) -> dict | None:
    """The row saved at ``path`` if it is this method's, made from config ``sha`` and has enough episodes."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    ok = row["row"] == method.label and row.get("config_sha") == sha and row["episodes"] >= budget.eval_episodes
    return row if ok else None


def run_cell_seed(cell: Cell, budget: Budget, out_root: Path, rows_root: Path, seed: int,
                  args: argparse.Namespace) -> list[dict]:
    """Train, distill and evaluate every method of one cell for one training seed (resumable)."""
    row_dir = rows_root / cell.key / f"seed{seed}"
    plan = methods(TrainConfig.from_json(ROOT / "configs" / config_name(cell)).policy.head.chain.n_blocks)
    shas = [row_sha(cell, budget, m.head, seed, args.overrides, m.distilled) for m in plan]
    finished = {i: row for i, m in enumerate(plan)
                if (row := _finished_row(row_dir / f"{i:02d}.json", m, budget, shas[i]))}
    if len(finished) == len(plan):  # a finished cell is never recomputed (not even its demonstrations)
        return list(finished.values())
    data = demos(cell, budget, out_root)
    out = out_root / cell.key / f"seed{seed}"
    needs = {(m.head, m.distilled) for i, m in enumerate(plan) if i not in finished}
    trained = train_heads(cell, budget, data, out, seed, args.overrides, needs)
    ckpts, timing = trained["ckpts"], trained["timing"]
    modes_demo = demo_modes(data)
    rows, evaluator, obs = [], None, None
    try:
        for i, m in enumerate(plan):
            if i in finished:
                rows.append(finished[i])
                continue
            done = row_dir / f"{i:02d}.json"
            deadline.check()
            evaluator = evaluator or Evaluator(EvalConfig(task=cell.task, images=cell.images, n_envs=args.n_envs))
            policy = Policy.load(ckpts[(m.head, m.distilled)])
            obs = obs if obs is not None else first_window(data, policy)
            s = evaluator.run(policy, budget.eval_episodes, seed_start=100000, solver=m.sampler).summary()
            t = timing.get(f"{m.head}_distilled" if m.distilled else m.head, {})
            row = {"suite": args.suite, "task": cell.task, "images": cell.images, "seed": seed, "row": m.label,
                   "head": m.head, "distilled": m.distilled, "nfe": policy.nfe(m.sampler),
                   "params": policy.num_trained_params(), "episodes": s["n_episodes"], "successes": s["n_success"],
                   "success": s["success_rate"], "ci95": s["success_ci95"], "success_modes": s["success_modes"],
                   "demo_modes": modes_demo, **mode_coverage(s["success_modes"], list(modes_demo)),
                   "latency_ms": latency_ms(policy, obs, m.sampler, budget.latency_reps),
                   "train_s": timing.get(m.head, {}).get("train_s"), "distill_s": t.get("distill_s"),
                   "chunk_rms_vs_teacher": t.get("chunk_rms_vs_teacher"), "eval_s": s["wall_s"],
                   "mean_length": s["mean_length"], "collisions": s["n_collisions"], "config_sha": shas[i]}  # fmt: skip
            atomic_write_text(done, json.dumps(row, indent=2))
            rows.append(row)
            print(f"{cell.task} seed {seed} {m.label:<32} NFE={row['nfe']:<4} success={row['success']:.2f} "
                  f"coverage={row['mode_coverage']} latency={row['latency_ms']:.2f} ms", flush=True)
    finally:
        if evaluator is not None:
            evaluator.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="smoke")
    p.add_argument("--out", default=None, help="work directory (default outputs/suite_<suite>)")
    p.add_argument("--tasks", nargs="*", default=None, help="run only these tasks of the suite")
    p.add_argument("--rows", default=None, help="finished rows (default benchmarks/results/<suite>; smoke: OUT/rows)")
    p.add_argument("--results", default=None, help="results page (default docs/results.md; smoke: OUT/results.md)")
    p.add_argument("--readme", default=None,
                   help="README whose suite-headline block is rewritten (default README.md; none for smoke "
                        "or with --results)")
    p.add_argument("--n-envs", type=int, default=1, help="evaluation env worker processes")
    p.add_argument("--overrides", nargs="*", default=[], help="extra key=value for every training run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rewrite the results page from ROWS")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly once this much time has passed (between trainings, distillations and rows); "
                        "a rerun continues: the gpu suite runs as parts of at most ~25 minutes this way")
    args = p.parse_args(argv)
    global deadline
    deadline = Deadline(args.max_minutes)
    cells, budget = SUITES[args.suite]
    out = Path(args.out or f"outputs/suite_{args.suite}")
    rows = Path(args.rows or (out / "rows" if args.suite == "smoke" else ROOT / "benchmarks" / "results" / args.suite))
    results = Path(args.results or (out / "results.md" if args.suite == "smoke" else ROOT / "docs" / "results.md"))
    readme = Path(args.readme) if args.readme else (
        ROOT / "README.md" if args.suite != "smoke" and args.results is None else None)
    if not args.report:
        torch.set_num_threads(args.threads)
        unknown = set(args.tasks or ()) - {c.task for c in cells}
        if unknown:
            p.error(f"tasks not in suite {args.suite}: {sorted(unknown)} (see benchmarks/suite_plan.py)")
        try:
            for cell in cells:
                if args.tasks and cell.task not in args.tasks:
                    continue
                for seed in cell.seeds:
                    run_cell_seed(cell, budget, out, rows, seed, args)
                write_report(rows, args.suite, cells, budget, results, readme)
        except PartDone:
            print(f"--max-minutes {args.max_minutes:g} reached: stopped between units of work; run the same "
                  "command again to continue", flush=True)
    write_report(rows, args.suite, cells, budget, results, readme)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
