"""``lfm-policy data ...``: inspect, convert and view demonstration datasets.

Subcommands: ``info``, ``import-robomimic``, ``export-robomimic``, ``view``. PATH arguments accept a
zarr replay buffer (a directory) or a robomimic HDF5 file. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lfm_policy.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the top-level parser."""
    data = subparsers.add_parser("data", help="inspect, convert and view demonstration datasets",
                                 description="Inspect, convert and view demonstration datasets (zarr replay "
                                             "buffers and robomimic HDF5 files).")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("info", help="episodes, keys, shapes, statistics and metadata of a dataset")
    p.add_argument("path", help="replay buffer directory (.zarr) or robomimic .hdf5 file")
    p.add_argument("--no-stats", action="store_true", help="skip per-key statistics (faster)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import-robomimic", help="convert a robomimic HDF5 file into a zarr replay buffer")
    p.add_argument("input", help="robomimic .hdf5 file")
    p.add_argument("output", help="replay buffer directory to create (.zarr)")
    p.add_argument("--obs-keys", nargs="+", default=None, help="observation keys to keep (default: all)")
    p.add_argument("--filter", dest="filter_key", default=None, help="only demos of mask/<FILTER> (e.g. train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export-robomimic", help="write a zarr replay buffer as a robomimic HDF5 file")
    p.add_argument("input", help="replay buffer directory (.zarr)")
    p.add_argument("output", help="robomimic .hdf5 file to create")
    p.add_argument("--next-obs", action="store_true", help="also write next_obs (last step repeated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("view", help="render an episode: cameras side by side + actions over time")
    p.add_argument("path", help="replay buffer directory (.zarr) or robomimic .hdf5 file")
    p.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    p.add_argument("--out", required=True, help="output video, .mp4 or .gif")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    p.add_argument("--cameras", nargs="+", default=None, help="image keys to show (default: all)")
    p.add_argument("--action-key", default=None, help="key to plot (default: the action key)")
    p.set_defaults(func=cmd_view)


@contextmanager
def open_dataset(path: str):
    """Open PATH as a replay buffer (directory) or robomimic file (HDF5); yield it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        from lfm_policy.datasets.replay_buffer import ReplayBuffer

        yield ReplayBuffer.open(p)
        return
    import h5py

    if not h5py.is_hdf5(p):
        raise DataError(f"{p}: neither a zarr replay buffer directory nor an HDF5 file (or the file is corrupt)")
    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile

    with RobomimicFile(p) as f:
        yield f


def describe(source: Any, *, stats: bool = True) -> dict[str, Any]:
    """The content of ``data info`` as a JSON-ready dict."""
    import numpy as np

    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile

    lengths = np.asarray(source.episode_lengths)
    out: dict[str, Any] = {
        "path": source.where,
        "format": "robomimic_hdf5" if isinstance(source, RobomimicFile) else "zarr_replay_buffer",
        "n_episodes": int(len(lengths)),
        "n_steps": int(lengths.sum()),
        "episode_length": _length_summary(lengths),
        "keys": {},
    }
    key_stats = {}
    if stats and len(lengths):
        from lfm_policy.datasets.stats import compute_stats

        key_stats = compute_stats(source)
    for key in source.keys:
        shape, dtype = source.key_spec(key)
        entry: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype), "image": key in source.image_keys}
        for name, value in key_stats.get(key, {}).items():
            entry[name] = np.round(np.asarray(value, dtype=np.float64), 6).tolist()
        out["keys"][key] = entry
    if isinstance(source, RobomimicFile):
        out["env_meta"] = source.env_meta
        out["filter_keys"] = {k: len(v) for k, v in source.filter_keys.items()}
    else:
        out["attrs"] = {k: v for k, v in source.attrs.items() if k != "filters"}
        out["filter_keys"] = {k: len(v) for k, v in (source.attrs.get("filters") or {}).items()}
    return out


def _length_summary(lengths: Any) -> dict[str, Any]:
    import numpy as np

    if not len(lengths):
        return {"min": 0, "max": 0, "mean": 0.0, "histogram": []}
    counts, edges = np.histogram(lengths, bins=min(8, max(1, len(np.unique(lengths)))))
    return {"min": int(lengths.min()), "max": int(lengths.max()), "mean": round(float(lengths.mean()), 2),
            "histogram": [[int(round(edges[i])), int(round(edges[i + 1])), int(c)] for i, c in enumerate(counts)]}


def _fmt(values: list | float) -> str:
    flat = values if isinstance(values, list) else [values]
    text = ", ".join(f"{v:.4g}" for v in flat[:6])
    return f"[{text}{', ...' if len(flat) > 6 else ''}]"


def cmd_info(args: argparse.Namespace) -> int:
    """Print the dataset summary."""
    with open_dataset(args.path) as source:
        info = describe(source, stats=not args.no_stats)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    el = info["episode_length"]
    print(f"{info['path']}  ({info['format']})")
    print(f"episodes: {info['n_episodes']}   steps: {info['n_steps']}   "
          f"episode length min/mean/max: {el['min']}/{el['mean']}/{el['max']}")
    if el["histogram"]:
        peak = max(c for _, _, c in el["histogram"]) or 1
        for lo, hi, c in el["histogram"]:
            print(f"  {lo:>6}-{hi:<6} {'#' * max(1 if c else 0, round(30 * c / peak))} {c}")
    print("keys:")
    for key, e in info["keys"].items():
        kind = "image" if e["image"] else "low-dim"
        print(f"  {key:<28} {str(tuple(e['shape'])):<16} {e['dtype']:<8} {kind}")
        for name in ("min", "max", "mean", "std"):
            if name in e:
                print(f"      {name:<5} {_fmt(e[name])}")
    meta = info.get("env_meta") if "env_meta" in info else info.get("attrs", {}).get("env_meta")
    if meta:
        print(f"env: {meta.get('env_name', '?')} (type {meta.get('type', '?')})")
    if info["filter_keys"]:
        print("filter keys: " + ", ".join(f"{k} ({n} episodes)" for k, n in info["filter_keys"].items()))
    other = {k: v for k, v in info.get("attrs", {}).items() if k != "env_meta"}
    if other:
        print("attrs: " + ", ".join(sorted(other)))
    return 0


class _Progress:
    """A tqdm bar created on the first update (so an early error prints on a clean line)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, total=total, unit="episode", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_import(args: argparse.Namespace) -> int:
    """Convert robomimic HDF5 → replay buffer."""
    from lfm_policy.datasets.robomimic_convert import import_robomimic

    progress = _Progress("import")
    try:
        buf = import_robomimic(args.input, args.output, obs_keys=args.obs_keys, filter_key=args.filter_key,
                               overwrite=args.overwrite, on_episode=progress)
    finally:
        progress.close()
    print(f"wrote {args.output}: {buf.n_episodes} episodes, {buf.n_steps} steps, keys {buf.keys}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Convert replay buffer → robomimic HDF5."""
    from lfm_policy.datasets.robomimic_convert import export_robomimic

    progress = _Progress("export")
    try:
        n = export_robomimic(args.input, args.output, overwrite=args.overwrite, next_obs=args.next_obs,
                             on_episode=progress)
    finally:
        progress.close()
    print(f"wrote {args.output}: {n} episodes")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Render one episode to a video."""
    from lfm_policy.datasets.video import write_episode_video

    with open_dataset(args.path) as source:
        n = source.n_episodes
        if not -n <= args.episode < n:
            raise DataError(f"{args.path}: episode {args.episode} out of range (the dataset has {n})")
        out = write_episode_video(source, args.episode, args.out, fps=args.fps, image_keys=args.cameras,
                                  action_key=args.action_key)
    print(f"wrote {out}")
    return 0
