"""Write a replay buffer as a LeRobot v3.0 folder (``lfm-policy data export-lerobot``).

What is written (LeRobot's own layout and defaults, one file of each kind per 1000 episodes at most)::

    meta/info.json                              codebase_version "v3.0", fps, features, path templates
    meta/stats.json                             min/max/mean/std/quantiles/count per feature (images: per channel)
    meta/tasks.parquet                          task → task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode (lengths, tasks, file indices, timestamps)
    data/chunk-000/file-000.parquet             every frame's low-dim features + the index columns
    videos/<key>/chunk-000/file-000.mp4         each camera, all episodes back to back (AV1, yuv420p, GOP 2)

Image keys (uint8 (T, H, W, 3)) become ``video`` features; everything is written to a temporary
directory next to the destination and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets.export_common import export_keys, open_for_export
from lfm_policy.datasets.lerobot_convert import lerobot_name
from lfm_policy.datasets.lerobot_video import encode_video

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
_INDEX_FEATURES = {k: {"dtype": dt, "shape": [1], "names": None} for k, dt in
                   (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                    ("index", "int64"), ("task_index", "int64"))}  # fmt: skip


def _is_image(arr: np.ndarray) -> bool:
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3


def _stats(x: np.ndarray, image: bool) -> dict[str, list]:
    """LeRobot's stats of one feature: min, max, mean, std, q01…q99, count (images: per channel, (C, 1, 1))."""
    if image:
        v = x.reshape(-1, 3).astype(np.float64) / 255.0
        shape = (3, 1, 1)
    else:
        v = x.reshape(len(x), -1).astype(np.float64)
        shape = x.shape[1:] or (1,)
    out = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0)}
    out.update({f"q{round(q * 100):02d}": np.quantile(v, q, axis=0) for q in (0.01, 0.10, 0.50, 0.90, 0.99)})
    return {**{k: a.reshape(shape).tolist() for k, a in out.items()}, "count": [int(len(v))]}


def export_lerobot(in_zarr: str | os.PathLike, out_dir: str | os.PathLike, *, task: str | None = None,
                   robot_type: str | None = None, fps: float | None = None, overwrite: bool = False,
                   on_episode: Callable[[int, int], None] | None = None) -> int:
    """Write a replay buffer as a LeRobot v3.0 dataset folder.

    Args:
        in_zarr: The replay buffer.
        out_dir: The LeRobot folder to create.
        task: Task string for episodes without ``tasks`` attrs (default: the buffer's ``task`` attr,
            else ``"default"``).
        robot_type: ``robot_type`` in info.json (default: the source's, else ``"unknown"``).
        fps: Frame rate (default: the buffer's ``fps`` attr, else 10).
        overwrite: Replace an existing ``out_dir``.
        on_episode: Progress callback ``on_episode(done, total)``.

    Returns:
        The number of episodes written.

    Raises:
        DataError: An empty buffer, no action key, an image key with odd width or height.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.

    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    buf = open_for_export(in_zarr, out_dir, overwrite)
    action_key, obs_keys = export_keys(buf, in_zarr)
    keys = [*obs_keys, action_key, *[k for k in ("reward", "done") if k in buf.keys]]
    source = buf.attrs.get("source") or {}
    known = {v: k for k, v in (source.get("names") or {}).items()} if str(source.get("format", "")).startswith(
        "lerobot") else {}
    first = buf.get_episode(0, keys)
    images = {k for k in keys if _is_image(first[k])}
    names = {k: known.get(k) or lerobot_name(k, k in images) for k in keys}
    names[action_key] = "action"
    fps = float(fps or buf.attrs.get("fps") or source.get("fps") or 10)
    default_task = task or buf.attrs.get("task") or "default"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        columns: dict[str, list] = {names[k]: [] for k in keys if k not in images}
        for c in _INDEX_FEATURES:
            columns[c] = []
        frames: dict[str, list[np.ndarray]] = {k: [] for k in images}
        lowdim: dict[str, list[np.ndarray]] = {k: [] for k in keys if k not in images}  # for the stats
        tasks: dict[str, int] = {}
        episodes: list[dict[str, Any]] = []
        start = 0
        for i in range(buf.n_episodes):
            ep = buf.get_episode(i, keys)
            t = len(ep[action_key])
            ep_tasks = list(buf.get_episode_attrs(i).get("tasks") or [default_task])
            for s in ep_tasks:
                tasks.setdefault(s, len(tasks))
            for k in keys:
                arr = np.asarray(ep[k])
                if k in images:
                    frames[k].append(arr)
                else:
                    lowdim[k].append(arr)
                    columns[names[k]].extend(arr.reshape(t, -1).tolist() if arr.ndim > 1 else arr.tolist())
            columns["timestamp"].extend((np.arange(t) / fps).astype(np.float32).tolist())
            columns["frame_index"].extend(range(t))
            columns["episode_index"].extend([i] * t)
            columns["index"].extend(range(start, start + t))
            columns["task_index"].extend([tasks[ep_tasks[0]]] * t)
            row = {"episode_index": i, "tasks": ep_tasks, "length": t, "data/chunk_index": 0, "data/file_index": 0,
                   "dataset_from_index": start, "dataset_to_index": start + t,
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            for k in images:  # every camera has a frame per step: the episode starts at step `start`
                t0 = start / fps
                row.update({f"videos/{names[k]}/chunk_index": 0, f"videos/{names[k]}/file_index": 0,
                            f"videos/{names[k]}/from_timestamp": t0, f"videos/{names[k]}/to_timestamp": t0 + t / fps})
            episodes.append(row)
            start += t
            if on_episode is not None:
                on_episode(i + 1, buf.n_episodes)
        video = {k: np.concatenate(v) for k, v in frames.items()}  # (steps, H, W, 3): encoded and summarized
        del frames
        features: dict[str, Any] = {}
        for k in keys:
            arr = first[k]
            if k in images:
                h, w = arr.shape[1:3]
                path = tmp / VIDEO_PATH.format(video_key=names[k], chunk_index=0, file_index=0)
                path.parent.mkdir(parents=True, exist_ok=True)
                encode_video(video[k], path, int(round(fps)))
                features[names[k]] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                                      "info": {"video.height": h, "video.width": w, "video.codec": "av1",
                                               "video.pix_fmt": "yuv420p", "is_depth_map": False,
                                               "video.fps": int(round(fps)), "video.channels": 3,
                                               "has_audio": False}}
            else:
                shape = list(arr.shape[1:]) or [1]
                features[names[k]] = {"dtype": str(arr.dtype), "shape": shape, "names": None}
        features.update(_INDEX_FEATURES)
        (tmp / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        table = {}
        for name, values in columns.items():
            ft = features[name]
            dtype = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
            if ft["shape"] == [1] and not (values and isinstance(values[0], list)):
                table[name] = pa.array(values, type=dtype)
            else:
                table[name] = pa.array(values, type=pa.list_(dtype, int(np.prod(ft["shape"]))))
        pq.write_table(pa.table(table), tmp / DATA_PATH.format(chunk_index=0, file_index=0))
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episodes), tmp / EPISODES_PATH)
        _write_tasks(tasks, tmp / "meta" / "tasks.parquet")
        stats = {names[k]: _stats(video[k] if k in images else np.concatenate(lowdim[k]), k in images) for k in keys}
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
        info = {"codebase_version": "v3.0", "robot_type": robot_type or source.get("robot_type") or "unknown",
                "total_episodes": buf.n_episodes, "total_frames": start, "total_tasks": len(tasks),
                "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                "fps": int(round(fps)), "splits": {"train": f"0:{buf.n_episodes}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if images else None, "features": features}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}") if out_dir.exists() else None
        if old is not None:
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return buf.n_episodes


def _write_tasks(tasks: dict[str, int], path: Path) -> None:
    """``meta/tasks.parquet`` as pandas writes it: column ``task_index``, index ``task``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {"index_columns": ["task"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}  # fmt: skip
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "task": pa.array(list(tasks), pa.string())})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)
