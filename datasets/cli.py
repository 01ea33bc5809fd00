"""``lfm-policy data ...``: inspect, convert and view demonstration datasets.

Subcommands: ``info``, ``check``, ``rewrite``, ``import-robomimic``, ``export-robomimic``,
``import-lerobot``, ``export-lerobot``, ``view``. PATH arguments accept a zarr replay buffer (a
directory), a robomimic HDF5 file or, for ``info``, a LeRobot dataset folder (``check`` and ``rewrite``:
replay buffers only). Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

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

    p = sub.add_parser("check", help="read every chunk of a replay buffer; report missing or corrupt chunks",
                       description="Read every chunk of every array of a zarr replay buffer and report every "
                                   "missing or corrupt chunk (key, chunk, step range). Exit code 1 on problems.")
    p.add_argument("path", help="replay buffer directory (.zarr)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("rewrite", help="re-write a replay buffer as format 2 (checksummed chunks)",
                       description="Copy a replay buffer (any format) into a new format-2 store: every chunk "
                                   "checksummed and stored. All-or-nothing; OUT may equal IN with --overwrite.")
    p.add_argument("input", help="replay buffer directory (.zarr)")
    p.add_argument("output", help="replay buffer directory to create (.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--missing-as-zero", action="store_true",
                   help="format-1 input: read missing chunks (format 1 skipped all-zero chunks) as zeros")
    p.set_defaults(func=cmd_rewrite)

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
    p.add_argument("--next-obs", action=argparse.BooleanOptionalAction, default=True,
                   help="write next_obs (default; --no-next-obs leaves it out): obs shifted by one step, the last "
                        "row being the episode's final observation when the buffer stores one (else the last "
                        "observation repeated), or the next_obs kept at import")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-lerobot", help="convert a LeRobot dataset folder (v3.0, v2.1) into a zarr replay buffer",
                       description="Convert a LeRobotDataset folder (meta/info.json, Parquet, MP4) into a replay "
                                   "buffer: observation.state -> state, observation.images.<cam> -> <cam>_image "
                                   "(uint8 HWC), action -> action. All-or-nothing.")
    p.add_argument("input", help="LeRobot dataset folder (the one holding meta/info.json)")
    p.add_argument("output", help="replay buffer directory to create (.zarr)")
    p.add_argument("--episodes", nargs="+", type=int, default=None, help="episode indices to import (default: all)")
    p.add_argument("--keys", nargs="+", default=None,
                   help="LeRobot features to keep, e.g. observation.state observation.images.front (default: all; "
                        "action is always kept)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_import_lerobot)

    p = sub.add_parser("export-lerobot", help="write a zarr replay buffer as a LeRobot v3.0 dataset folder",
                       description="Write a replay buffer as a LeRobotDataset v3.0 folder: low-dim keys to Parquet, "
                                   "image keys to AV1 MP4 (LeRobot's defaults). All-or-nothing.")
    p.add_argument("input", help="replay buffer directory (.zarr)")
    p.add_argument("output", help="LeRobot dataset folder to create")
    p.add_argument("--task", default=None, help="task string of episodes that have none (default: the buffer's task)")
    p.add_argument("--robot-type", default=None, help="robot_type in meta/info.json")
    p.add_argument("--fps", type=float, default=None, help="frame rate (default: the buffer's, else 10)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export_lerobot)

    p = sub.add_parser("view", help="render an episode: cameras side by side + actions over time")
    p.add_argument("path", help="replay buffer directory (.zarr) or robomimic .hdf5 file")
    p.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    p.add_argument("--out", required=True, help="output video, .mp4 or .gif")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    p.add_argument("--cameras", nargs="+", default=None, help="image keys to show (default: all)")
    p.add_argument("--action-key", default=None, help="key to plot (default: the action key)")
    p.set_defaults(func=cmd_view)


@contextmanager
def open_dataset(path: str, *, check_finite: bool = True, lerobot: bool = False):
    """Open PATH as a replay buffer (directory) or robomimic file (HDF5); yield it.

    ``check_finite=False`` lets a robomimic file with NaN/Inf be read (``data info`` reports them);
    ``lerobot=True`` also opens a LeRobot dataset folder (a :class:`LeRobotFolder`: only ``data info``
    reads one; the other commands see it as what it is not, a replay buffer, and say so).
    """
    from lfm_policy.datasets.lerobot_format import LeRobotFolder, is_lerobot_folder

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if lerobot and is_lerobot_folder(p):
        yield LeRobotFolder(p)
        return
    if p.is_dir():
        from lfm_policy.datasets.replay_buffer import ReplayBuffer

        yield ReplayBuffer.open(p)
        return
    import h5py

    if not h5py.is_hdf5(p):
        raise DataError(f"{p}: neither a zarr replay buffer directory nor an HDF5 file (or the file is corrupt)")
    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile

    with RobomimicFile(p, check_finite=check_finite) as f:
        yield f


def cmd_info(args: argparse.Namespace) -> int:
    """Print the dataset summary (:mod:`lfm_policy.datasets.info`)."""
    from lfm_policy.datasets.info import describe, render
    from lfm_policy.datasets.lerobot_format import LeRobotFolder, render_lerobot

    with open_dataset(args.path, check_finite=False, lerobot=True) as source:
        if isinstance(source, LeRobotFolder):
            info = source.describe()
            print(json.dumps(info, indent=2) if args.json else render_lerobot(info))
            return 0
        info = describe(source, stats=not args.no_stats)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Read every chunk; print OK or every problem; exit 1 on problems."""
    from lfm_policy.datasets.integrity import check_store

    report = check_store(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    kind = "checksummed" if report.checksummed else "not checksummed"
    head = (f"{report.path}: format {report.format_version} ({kind}), {report.n_episodes} episodes, "
            f"{report.n_steps} steps, {report.chunks_checked} chunks checked")
    if report.ok:
        print(f"{head}: OK")
    else:
        print(f"{head}: {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  {problem}")
    for note in report.notes:
        print(f"note: {note}")
    return 0 if report.ok else 1


def cmd_rewrite(args: argparse.Namespace) -> int:
    """Re-write a replay buffer as format 2."""
    from lfm_policy.datasets.integrity import rewrite_store

    with _Progress("rewrite") as progress:
        buf = rewrite_store(args.input, args.output, overwrite=args.overwrite, missing_as_zero=args.missing_as_zero,
                            on_episode=progress)
    print(f"wrote {args.output}: format {buf.format_version}, {buf.n_episodes} episodes, {buf.n_steps} steps, "
          f"keys {buf.keys}")
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

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _convert(kind: str, fn, args: argparse.Namespace, **kwargs) -> int:
    """Run an importer (returns the buffer) or exporter (returns the episode count) with a progress bar."""
    with _Progress(kind) as progress:
        result = fn(args.input, args.output, overwrite=args.overwrite, on_episode=progress, **kwargs)
    if isinstance(result, int):
        print(f"wrote {args.output}: {result} episodes")
    else:
        print(f"wrote {args.output}: {result.n_episodes} episodes, {result.n_steps} steps, keys {result.keys}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Convert robomimic HDF5 → replay buffer."""
    from lfm_policy.datasets.robomimic_convert import import_robomimic

    return _convert("import", import_robomimic, args, obs_keys=args.obs_keys, filter_key=args.filter_key)


def cmd_export(args: argparse.Namespace) -> int:
    """Convert replay buffer → robomimic HDF5."""
    from lfm_policy.datasets.robomimic_convert import export_robomimic

    return _convert("export", export_robomimic, args, next_obs=args.next_obs)


def cmd_import_lerobot(args: argparse.Namespace) -> int:
    """Convert LeRobot folder → replay buffer."""
    from lfm_policy.datasets.lerobot_convert import import_lerobot

    return _convert("import", import_lerobot, args, episodes=args.episodes, keys=args.keys)


def cmd_export_lerobot(args: argparse.Namespace) -> int:
    """Convert replay buffer → LeRobot v3.0 folder."""
    from lfm_policy.datasets.lerobot_write import export_lerobot

    return _convert("export", export_lerobot, args, task=args.task, robot_type=args.robot_type, fps=args.fps)


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
