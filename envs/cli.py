"""``lfm-policy collect`` and ``lfm-policy tasks`` (registered by ``lfm_policy.cli``).

Heavy imports (gymnasium, simulators, zarr) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``collect`` and ``tasks`` to the top-level parser."""
    p = subparsers.add_parser(
        "collect",
        help="roll out a task's scripted expert and write demonstrations (zarr or robomimic HDF5)",
        description="Roll out the scripted expert of TASK and write the successful episodes (episode i "
        "uses seed S+i) to OUT: a zarr replay buffer, or with --format robomimic a robomimic HDF5 file.",
    )
    p.add_argument("--task", required=True, help="task name, e.g. toy/point-obstacle (see `lfm-policy tasks`)")
    p.add_argument("--episodes", type=int, required=True, help="episodes to write")
    p.add_argument("--out", required=True, help="output path (PATH.zarr, or PATH.hdf5 with --format robomimic)")
    p.add_argument("--images", action="store_true", help="record camera observations")
    p.add_argument("--image-size", type=int, default=None, help="camera image side in pixels (task default)")
    p.add_argument(
        "--env-arg",
        dest="env_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra env option, e.g. camera=corner3 (VALUE parsed as JSON if it can be); repeatable",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--format", choices=("zarr", "robomimic"), default=None,
                   help="output format (default: robomimic for .hdf5/.h5, else zarr)")  # fmt: skip
    p.add_argument("--keep-failed", action="store_true", help="keep failed episodes too")
    p.add_argument("--max-attempts", type=int, default=None, help="give up after this many episodes (default 2N+10)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists (and discard an interrupted collection of it)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted collection of OUT (same settings; --episodes may grow)")
    p.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                   help="modes the expert may choose from, e.g. --modes left (one-sided demonstrations) on "
                        "toy/point-obstacle; default: all modes. Each mode present becomes filter key mode_<MODE>")
    p.add_argument("--operators", nargs="+", default=None, metavar="NAME[=WEIGHT]",
                   help="simulated operators of different proficiency, each episode's drawn from its seed with "
                        "these weights (default 1), e.g. --operators better okay worse or better=2 worse=1; "
                        "built-in: expert, better, okay, worse, fast, slow (docs/demonstrations.md). Each "
                        "operator present becomes a filter key (robomimic mask/<NAME>)")
    p.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register custom tasks); repeatable")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_collect)

    t = subparsers.add_parser("tasks", help="list the registered tasks with observation/action specs")
    t.add_argument("names", nargs="*", help="only these tasks (or families, e.g. toy, metaworld)")
    t.add_argument("--details", action="store_true", help="create each env to show its full obs/action spec")
    t.add_argument("--images", action="store_true", help="with --details: specs with camera observations")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register custom tasks); repeatable")  # fmt: skip
    t.set_defaults(func=_tasks)


def _quiet_third_party_logs() -> None:
    """PyOpenGL logs an INFO line about OpenGL_accelerate on import; keep the CLI output clean."""
    logging.getLogger("OpenGL").setLevel(logging.WARNING)


def _parse_env_args(items: list[str]) -> dict[str, Any]:
    from lfm_policy.errors import LfmPolicyError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise LfmPolicyError(f"--env-arg {item!r}: expected KEY=VALUE with KEY a Python identifier")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _parse_operators(items: list[str] | None) -> dict[str, float] | None:
    """``["better=2", "worse"]`` → ``{"better": 2.0, "worse": 1.0}`` (names checked against the built-ins)."""
    from lfm_policy.envs.operators import PROFILES
    from lfm_policy.errors import LfmPolicyError

    if items is None:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if name not in PROFILES:
            raise LfmPolicyError(f"--operators {item!r}: unknown operator {name!r}; built-in operators: "
                                 f"{', '.join(PROFILES)}")
        try:
            weight = float(raw) if sep else 1.0
        except ValueError:
            weight = float("nan")
        if not weight >= 0 or weight == float("inf"):
            raise LfmPolicyError(f"--operators {item!r}: expected NAME or NAME=WEIGHT with WEIGHT a number >= 0")
        if name in out:
            raise LfmPolicyError(f"--operators: {name!r} is given twice")
        out[name] = weight
    if not any(out.values()):
        raise LfmPolicyError(f"--operators {' '.join(items)}: at least one weight must be > 0")
    return out


def _collect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lfm_policy.envs import registry
    from lfm_policy.envs.collect import CollectConfig, collect

    _quiet_third_party_logs()
    for module in args.plugins:
        importlib.import_module(module)
    registry.task_family(args.task)  # unknown task → one-line error before the progress bar shows
    fmt = args.format or ("robomimic" if Path(args.out).suffix.lower() in (".hdf5", ".h5") else "zarr")
    env_kwargs = _parse_env_args(args.env_args)
    operators = _parse_operators(args.operators)
    if args.image_size is not None:
        env_kwargs["image_size"] = args.image_size
    cfg = CollectConfig(
        task=args.task,
        n_episodes=args.episodes,
        seed=args.seed,
        images=args.images,
        workers=args.workers,
        keep_failed=args.keep_failed,
        max_attempts=args.max_attempts,
        env_kwargs=env_kwargs,
        plugins=tuple(args.plugins),
        modes=tuple(args.modes) if args.modes is not None else None,
        operators=operators,
    )
    bar = tqdm(total=cfg.n_episodes, desc=f"collect {cfg.task}", unit="ep", disable=args.no_progress,
               file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    first = [True]
    tried: dict[str, list[int]] = {}  # operator -> [successes, attempts] of this run's rollouts

    def on_episode(ep: Any, kept: bool, n_kept: int, n_discarded: int) -> None:
        if ep.operator is not None:
            counts = tried.setdefault(ep.operator, [0, 0])
            counts[0] += int(ep.success)
            counts[1] += 1
        if first[0]:  # a resumed collection starts with the episodes it already has
            first[0] = False
            bar.update(n_kept - int(kept) - bar.n)
        if kept:
            bar.update(1)
        bar.set_postfix(discarded=n_discarded, refresh=False)

    try:
        res = collect(cfg, args.out, fmt=fmt, overwrite=args.overwrite, resume=args.resume, on_episode=on_episode)
    except BaseException as e:
        bar.close()
        for note in getattr(e, "__notes__", []):
            print(note, file=sys.stderr)
        raise
    bar.close()
    modes = f"; modes: {', '.join(f'{k} {v}' for k, v in res.modes.items())}" if res.modes else ""
    if res.operators:
        modes += f"; operators: {', '.join(f'{k} {v}' for k, v in res.operators.items())}"
    resumed = f" ({res.n_resumed} from the interrupted run)" if res.n_resumed else ""
    print(
        f"wrote {res.n_kept} episodes{resumed} ({res.n_steps} steps) to {res.path} [{fmt}]; "
        f"discarded {res.n_discarded} failed episode(s); {res.seconds:.1f} s, "
        f"{res.episodes_per_s:.2f} episodes/s{modes}"
    )
    if tried:
        print("success by operator (attempts of this run): "
              + ", ".join(f"{k} {s}/{n}" for k, (s, n) in sorted(tried.items())))
    if res.n_kept < cfg.n_episodes:
        print(
            f"lfm-policy collect: warning: only {res.n_kept} of {cfg.n_episodes} episodes succeeded within "
            f"{cfg.attempts} attempts (raise --max-attempts)",
            file=sys.stderr,
        )
    return 0


def _fmt_obs(obs_spec: dict[str, Any]) -> str:
    return ", ".join(f"{k} {dtype} {tuple(shape)}" for k, (shape, dtype) in obs_spec.items())


def _fmt_action(action_spec: dict[str, Any]) -> str:
    low, high = set(action_spec["low"]), set(action_spec["high"])
    rng = f"[{low.pop():g}, {high.pop():g}]" if len(low) == 1 and len(high) == 1 else "per-dim bounds"
    return f"float32 {tuple(action_spec['shape'])} in {rng}"


def _tasks(args: argparse.Namespace) -> int:
    from lfm_policy.envs import registry

    _quiet_third_party_logs()
    for module in args.plugins:
        importlib.import_module(module)
    names = registry.list_tasks()
    if args.names:
        families = {registry.task_family(n) for n in names}
        selected = []
        for want in args.names:
            if want in families:
                selected += registry.list_tasks(want)
            else:
                registry.task_family(want)  # unknown → one-line error with close matches
                selected.append(want)
        names = list(dict.fromkeys(selected))
    rows = []
    for name in names:
        spec = registry.get_task_spec(name, create=args.details)
        row = {"name": spec.name, "family": spec.family, "max_episode_steps": spec.max_episode_steps,
               "description": spec.description, "has_expert": spec.has_expert,
               "obs": spec.obs_spec, "action": spec.action_spec}  # fmt: skip
        if spec.obs_spec is not None and (args.images or spec.family == "toy"):
            img = registry.get_task_spec(name, images=True, create=args.details or spec.family == "toy").obs_spec
            row["image_obs"] = {k: v for k, v in (img or {}).items() if k not in spec.obs_spec}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, default=list))
        return 0
    family = None
    for row in rows:
        if row["family"] != family:
            family = row["family"]
            count = sum(r["family"] == family for r in rows)
            print(f"{family} ({count} task{'s' if count != 1 else ''})")
        steps = row["max_episode_steps"] if row["max_episode_steps"] is not None else "?"
        print(f"  {row['name']:<40} max {steps} steps   {row['description']}")
        if row["obs"] is not None:
            print(f"      obs: {_fmt_obs(row['obs'])}")
            if row.get("image_obs"):
                print(f"      with --images: {_fmt_obs(row['image_obs'])}")
            print(f"      action: {_fmt_action(row['action'])}")
    if not args.details and any(r["obs"] is None for r in rows):
        print("(simulator tasks: pass --details to create the envs and show their obs/action specs)")
    return 0
