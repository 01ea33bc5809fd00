#!/usr/bin/env python
"""Open a LeRobot dataset folder with LeRobot's own reader and print what it sees.

Meant for checking that a folder written by another tool (our exporter) is a valid
LeRobotDataset v3.0 for LeRobot 0.6.1. Run it in the throwaway lerobot env:

    /work/lerobot_env/v30/bin/python scripts/lerobot_fixtures/read_back.py tests/fixtures/lerobot/v30/video
    /work/lerobot_env/v30/bin/python scripts/lerobot_fixtures/read_back.py PATH --frames 0 5 -1

It prints fps, codebase version, features, number of episodes / frames, and for a
few frames (default: first, middle, last) the shapes and dtypes of the state,
action and image entries, plus episode_index / frame_index / timestamp / task.
It also iterates over every frame once (``--no-full-scan`` to skip) so that a
missing or undecodable video frame anywhere fails the check.

Exit code 0 on success, 1 on any failure (the traceback is printed). It also works
in the lerobot 0.3.3 env on v2.1 folders. Never downloads anything (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

_TMP_HOME = tempfile.mkdtemp(prefix="lerobot_read_back_hf_")
atexit.register(shutil.rmtree, _TMP_HOME, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(_TMP_HOME, "hf_home"))
os.environ.setdefault("HF_LEROBOT_HOME", os.path.join(_TMP_HOME, "lerobot_home"))


def describe(v) -> str:
    """One line: shape, dtype and range of a value LeRobot returned."""
    import numpy as np
    import torch

    if isinstance(v, torch.Tensor):
        extra = ""
        if v.numel() == 1:
            extra = f" value={v.item()!r}"
        elif v.is_floating_point() and v.numel():
            extra = f" min={v.min().item():.4g} max={v.max().item():.4g}"
        return f"tensor shape={tuple(v.shape)} dtype={str(v.dtype).replace('torch.', '')}{extra}"
    if isinstance(v, np.ndarray):
        return f"ndarray shape={v.shape} dtype={v.dtype}"
    if isinstance(v, str):
        return repr(v)
    return f"{type(v).__name__} {v!r}"


def video_backend_for_reading() -> str:
    """Torchcodec when it loads, else PyAV."""
    try:
        import torchcodec.decoders  # noqa: F401

        return "torchcodec"
    except Exception:
        return "pyav"


def main() -> int:
    """Open the folder with LeRobot's reader, print what it holds; 0 when every frame reads."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="dataset root (the folder holding meta/, data/, videos/)")
    ap.add_argument("--repo-id", default=None, help="repo_id to pass (default: local/<folder name>)")
    ap.add_argument("--frames", type=int, nargs="*", default=None, help="frame indices to show (negative ok)")
    ap.add_argument("--no-full-scan", action="store_true", help="do not read every frame")
    ap.add_argument(
        "--expect-version",
        default=None,
        help="fail unless meta/info.json codebase_version equals this (e.g. v3.0)",
    )
    args = ap.parse_args()

    root = args.path.resolve()
    repo_id = args.repo_id or f"local/{root.name}"
    try:
        from importlib.metadata import version

        try:
            from lerobot.datasets.lerobot_dataset import LeRobotDataset
        except ImportError:
            from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} does not exist: not a LeRobot dataset root")
        info = json.loads(info_path.read_text())
        print(f"lerobot {version('lerobot')}  reading {root}")
        print(f"codebase_version: {info.get('codebase_version')}")
        if args.expect_version and info.get("codebase_version") != args.expect_version:
            raise ValueError(f"codebase_version {info.get('codebase_version')!r} != {args.expect_version!r}")

        backend = video_backend_for_reading()
        ds = LeRobotDataset(repo_id, root=root, video_backend=backend)

        print(f"fps: {ds.fps}")
        print(f"num_episodes: {ds.num_episodes}")
        print(f"num_frames: {ds.num_frames} (len={len(ds)})")
        print(f"video_backend: {backend}")
        print(f"camera_keys: {list(ds.meta.camera_keys)}  video_keys: {list(ds.meta.video_keys)}")
        print("features:")
        for k, ft in ds.features.items():
            line = f"  {k}: dtype={ft['dtype']} shape={tuple(ft['shape'])}"
            vinfo = ft.get("info") or ft.get("video_info")
            if vinfo:
                line += " info=" + json.dumps(vinfo, sort_keys=True)
            print(line)
        tasks = ds.meta.tasks
        try:  # v3.0: pandas DataFrame indexed by task string; v2.1: dict index -> task
            is_frame = hasattr(tasks, "index") and not isinstance(tasks, dict)
            task_list = list(tasks.index) if is_frame else list(tasks.values())
        except Exception:
            task_list = tasks
        print(f"tasks: {task_list}")

        n = len(ds)
        if n == 0:
            raise ValueError("dataset has no frames")
        idxs = args.frames if args.frames else sorted({0, n // 2, n - 1})
        for i in idxs:
            j = i % n
            item = ds[j]
            print(f"frame {j}:")
            for k in sorted(item):
                print(f"  {k}: {describe(item[k])}")
            for k in ("observation.state", "action"):
                if k in ds.features and k not in item:
                    raise KeyError(f"frame {j} lacks {k}")
            for k in ds.meta.camera_keys:
                if k not in item:
                    raise KeyError(f"frame {j} lacks camera {k}")

        if not args.no_full_scan:
            for j in range(n):
                item = ds[j]
                for k in ds.meta.camera_keys:
                    shape = tuple(item[k].shape)
                    ft_shape = tuple(ds.features[k]["shape"])  # usually (H, W, C); reader gives (C, H, W)
                    if len(shape) != 3 or sorted(shape) != sorted(ft_shape):
                        raise ValueError(f"frame {j} {k}: shape {shape} vs feature shape {ft_shape}")
            print(f"full scan: read all {n} frames OK")
        print("OK")
        return 0
    except Exception:
        traceback.print_exc()
        print("FAILED", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
