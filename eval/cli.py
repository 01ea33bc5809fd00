"""``lfm-policy eval`` and ``lfm-policy compare`` (registered by ``lfm_policy.cli``).

Heavy imports (torch, gymnasium, simulators, matplotlib) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``compare`` to the top-level parser."""
    p = subparsers.add_parser(
        "eval", help="roll a checkpoint out on a task; write results.json, report.md and videos",
        description="Evaluate CHECKPOINT on TASK: episode i is reset with seed SEED_START+i (the same seeds for "
        "every checkpoint, so runs are paired). Writes OUT/results.json, OUT/report.md and OUT/videos/*.mp4, "
        "recording how the environment was built. Ctrl-C writes the episodes finished so far.")
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + policy.json)")
    p.add_argument("--task", default=None,
                   help="task name, e.g. toy/point-obstacle (see `lfm-policy tasks`); optional with --env-from")
    p.add_argument("--env-from", default=None, metavar="DATASET",
                   help="build the env the dataset was made in: a robomimic HDF5 file (its env_args) or a zarr "
                        "store (its task, env_kwargs and env_meta attrs)")
    p.add_argument("--episodes", type=int, default=50, help="episodes (default 50)")
    p.add_argument("--seed-start", type=int, default=100000, help="seed of episode 0 (default 100000)")
    p.add_argument("--n-envs", type=int, default=1, help="parallel envs; >1 runs worker processes (default 1)")
    p.add_argument("--videos", type=int, default=0, help="record the first K episodes as mp4 (default 0)")
    p.add_argument("--nfe", type=int, nargs="+", default=None, metavar="STEPS",
                   help="solver steps per flow block (NFE = blocks × steps × evaluations per step), or DDIM "
                        "steps of a diffusion head; several values run one evaluation each into OUT/steps-<k>/")
    p.add_argument("--solver", default=None, metavar="SOLVER",
                   help="euler/midpoint/heun/rk4 for the flow blocks, student for distilled blocks, one per block "
                        "as a list (student,student,midpoint:2), or ddim/ddpm for a diffusion head "
                        "(default: the checkpoint's)")
    p.add_argument("--images", action="store_true",
                   help="make the env with camera observations (automatic for a policy that takes images)")
    p.add_argument("--env-arg", dest="env_args", action="append", default=[], metavar="KEY=VALUE",
                   help="extra env option (VALUE parsed as JSON if it can be); repeatable")
    p.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register custom tasks); repeatable")
    p.add_argument("--device", default="cpu", help="inference device (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in this process (default 1: small policies are fastest that way)")
    p.add_argument("--context", choices=("forkserver", "spawn"), default="forkserver",
                   help="start method of the env workers")
    p.add_argument("--no-batch-inference", action="store_true",
                   help="one policy call per env: episodes bit-identical for any --n-envs (slower)")
    p.add_argument("--out", required=True, help="results directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    c = subparsers.add_parser("compare", help="side-by-side table and plot of several eval results")
    c.add_argument("results", nargs="+", help="results directories (or results.json files)")
    c.add_argument("--plot", default=None, help="PNG path (default: compare.png next to the first result)")
    c.add_argument("--names", nargs="*", default=None, help="row labels (default: directory names)")
    c.add_argument("--json", default=None, metavar="PATH", help="also write the tables' numbers as JSON")
    c.add_argument("--allow-env-mismatch", action="store_true",
                   help="compare runs made in different environments (or tasks) instead of refusing")
    c.add_argument("--allow-seed-mismatch", action="store_true",
                   help="compare runs whose seeds start elsewhere instead of refusing (paired where seeds coincide)")
    c.set_defaults(func=_compare)


def _solver_runs(policy: Any, nfe: list[int] | None, method: str | None) -> list[tuple[str | None, Any]]:
    """(subdirectory, solver) per evaluation; solver None means the checkpoint's own."""
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.flow.solvers import STUDENT, SolverConfig, parse_solvers
    from lfm_policy.heads import DiffusionSampler

    if nfe is None and method is None:
        return [(None, None)]
    kind = policy.config.head.kind
    diffusion = {"ddim", "ddpm"}
    if kind == "diffusion":
        d = policy.config.head.diffusion
        method = method or d.sampler
        if method not in diffusion:
            raise LfmPolicyError(f"--solver {method}: a diffusion head samples with ddim or ddpm")
        if method == "ddpm":
            if nfe is not None:
                raise LfmPolicyError("--nfe: DDPM samples with all num_train_timesteps steps; use --solver ddim")
            return [(None, DiffusionSampler("ddpm"))]
        steps = nfe or [policy.nfe(DiffusionSampler("ddim"))]  # the head resolves its default DDIM steps
        return [(f"steps-{s}" if len(steps) > 1 else None, DiffusionSampler("ddim", int(s))) for s in steps]
    chain = getattr(policy.head, "chain", None)
    if chain is None or method in diffusion:
        raise LfmPolicyError(f"--nfe/--solver {method or ''} do not apply to this checkpoint's head ({kind!r}): "
                             "euler/midpoint/heun/rk4/student for lfm and fm, ddim/ddpm for diffusion")
    if method is not None and "," in method:  # one solver per block
        if nfe is not None:
            raise LfmPolicyError("--nfe does not combine with a per-block --solver list (give METHOD:STEPS there)")
        solvers = parse_solvers(method)
        _check_solvers(chain, solvers)
        return [(None, solvers)]
    if method is None:  # --nfe alone: the steps of every ODE block of the default; distilled blocks stay students
        per_block = chain.solvers()
        return [(f"steps-{s}" if len(nfe) > 1 else None,
                 [b if b.method == STUDENT else SolverConfig(method=b.method, steps=int(s)) for b in per_block])
                for s in nfe]
    solver = SolverConfig.parse(method)
    if solver.method == STUDENT:
        if nfe is not None:
            raise LfmPolicyError("--nfe: a student has the steps it was distilled with")
        _check_solvers(chain, solver)
        return [(None, solver)]
    steps = nfe or [solver.steps if ":" in method else chain.config.sample_solver.steps]
    return [(f"steps-{s}" if len(steps) > 1 else None, SolverConfig(method=solver.method, steps=int(s))) for s in steps]


def _check_solvers(chain: Any, solvers: Any) -> None:
    from lfm_policy.errors import LfmPolicyError

    try:
        chain.solvers(solvers)
    except ValueError as e:
        raise LfmPolicyError(f"--solver: {e}") from None


def _effective_solver(policy: Any, solver: Any) -> dict | list[dict] | None:
    """The solver a run samples with: the one asked for, else the checkpoint's own (None: one-shot head).

    A flow chain's per-block solvers (a distilled chain, or a per-block ``--solver``) are a list, one per
    block; a single solver for every block is one dict.
    """
    from lfm_policy.heads import DiffusionSampler

    if isinstance(solver, (list, tuple)):
        return [s.to_dict() for s in solver]
    if solver is not None:
        return solver.to_dict()
    if policy.config.head.kind == "diffusion":
        sampler = policy.config.head.diffusion.sampler
        steps = policy.nfe(DiffusionSampler("ddim")) if sampler == "ddim" else None
        return DiffusionSampler(sampler, steps).to_dict()
    chain = getattr(policy.head, "chain", None)
    if chain is None:
        return None
    per_block = chain.solvers()
    return per_block[0].to_dict() if all(s == per_block[0] for s in per_block) else [s.to_dict() for s in per_block]


def _environment(args: argparse.Namespace, images: bool) -> tuple[str, dict[str, Any], str]:
    """(task, env kwargs, source) from --task, --env-from and --env-arg."""
    from lfm_policy.envs.cli import _parse_env_args
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.eval.env_from import read_dataset_env, resolve_env
    from lfm_policy.eval.environment import REGISTRY_DEFAULT

    env_args = _parse_env_args(args.env_args)
    if args.env_from is None:
        if args.task is None:
            raise LfmPolicyError("give --task TASK or --env-from DATASET")
        return args.task, env_args, REGISTRY_DEFAULT
    task, kwargs = resolve_env(read_dataset_env(args.env_from), args.task, images, env_args)
    return task, kwargs, str(Path(args.env_from).resolve())


def _eval(args: argparse.Namespace) -> int:
    import torch

    from lfm_policy import Policy
    from lfm_policy.envs.cli import _quiet_third_party_logs
    from lfm_policy.eval.report import build_record, write_results
    from lfm_policy.eval.rollout import EvalConfig, Evaluator

    _quiet_third_party_logs()
    torch.set_num_threads(max(1, args.threads))
    policy = Policy.load(args.checkpoint, map_location=args.device)
    images = args.images or bool(policy.spec.image_keys)
    task, env_kwargs, source = _environment(args, images)
    if policy.spec.image_keys:  # render only the policy's cameras, at its resolution
        from lfm_policy.eval.environment import policy_camera_kwargs

        env_kwargs = policy_camera_kwargs(task, {k: policy.spec.obs_shapes[k] for k in policy.spec.image_keys},
                                          env_kwargs)
    runs = _solver_runs(policy, args.nfe, args.solver)
    out = Path(args.out)
    config = EvalConfig(task=task, n_envs=args.n_envs, images=images, env_kwargs=env_kwargs,
                        plugins=tuple(args.plugins), context=args.context,
                        batch_inference=not args.no_batch_inference, env_source=source)
    interrupted = False
    with Evaluator(config) as evaluator:
        for sub, solver in runs:
            run_out = out / sub if sub else out
            bar = None
            if not args.no_progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=args.episodes, desc=f"eval {sub or task}", unit="ep", dynamic_ncols=True)

            def on_episode(ep: Any, bar: Any = bar) -> None:
                if bar is not None:
                    bar.update(1)

            results = evaluator.run(policy, args.episodes, args.seed_start, solver=solver, videos=args.videos,
                                    video_dir=run_out / "videos" if args.videos else None, on_episode=on_episode)
            if bar is not None:
                bar.close()
            record = build_record(results, task=task, checkpoint=args.checkpoint, seed_start=args.seed_start,
                                  n_envs=args.n_envs, nfe=policy.nfe(solver),
                                  solver=_effective_solver(policy, solver),
                                  extra={"head": policy.config.head.kind,
                                         "batch_inference": not args.no_batch_inference})
            path = write_results(run_out, record)
            s = record["summary"]
            lo, hi = s["success_ci95"]
            print(f"{sub or task}: success {s['n_success']}/{s['n_episodes']} = {s['success_rate']:.3f} "
                  f"(95% CI {lo:.3f}–{hi:.3f}), NFE {record['nfe']}, chunk p50 "
                  f"{s['chunk_latency_ms']['p50'] or float('nan'):.2f} ms, errors {s['n_errors']} -> {path}")
            if args.videos and results.episodes and not any(e.video for e in results.episodes[: args.videos]):
                print(f"warning: no video frames: the env of {task} returned no frame from render() and has no "
                      "camera observation to fall back on (try --images)", file=sys.stderr)
            if results.interrupted:
                interrupted = True
                break
    if interrupted:
        print("interrupted: wrote the episodes finished so far", file=sys.stderr)
        return 130
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lfm_policy.config import atomic_write_text
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.eval.compare import check_comparable, compare_plot, compare_table, paired_table
    from lfm_policy.eval.report import load_results

    records = [load_results(r) for r in args.results]
    names = args.names or [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in args.results]
    if len(names) != len(records):
        raise LfmPolicyError(f"--names has {len(names)} labels for {len(records)} results")
    notes = check_comparable(records, names, allow_env_mismatch=args.allow_env_mismatch,
                             allow_seed_mismatch=args.allow_seed_mismatch)
    print(compare_table(records, names))
    stats: list[dict[str, Any]] = []
    if len(records) > 1:
        table, stats = paired_table(records, names)
        print(f"\nPaired by seed against {names[0]} (episodes with an error left out; McNemar: exact two-sided "
              "binomial test on the discordant seeds):\n")
        print(table)
    for note in notes:
        print(f"note: {note}")
    first = Path(args.results[0])
    plot = Path(args.plot) if args.plot else (first if first.is_dir() else first.parent) / "compare.png"
    compare_plot(records, names, plot)
    print(f"plot: {plot}")
    if args.json:
        rows = [{"run": n, "path": str(p), "task": r["task"], "head": r.get("head"), "solver": r.get("solver"),
                 "nfe": r["nfe"], "seed_start": r["seed_start"], "summary": r["summary"],
                 "environment_fingerprint": r["environment"]["fingerprint"]
                 if isinstance(r["environment"], dict) else r["environment"]}
                for n, p, r in zip(names, args.results, records)]
        atomic_write_text(Path(args.json), json.dumps({"runs": rows, "paired": stats, "notes": notes}, indent=2))
        print(f"json: {args.json}")
    if any(r["summary"]["interrupted"] for r in records):
        print(json.dumps({"warning": "some runs were interrupted"}), file=sys.stderr)
    return 0
