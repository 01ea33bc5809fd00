"""Read a LeRobotDataset folder (format v3.0, v2.1 or v2.0) with pyarrow and PyAV — no LeRobot import.

A LeRobot folder::

    meta/info.json        codebase_version, fps, features {name: {dtype, shape, names}}, path templates
    meta/stats.json       per-feature statistics
    v3.0: meta/tasks.parquet (task → task_index), meta/episodes/chunk-XXX/file-YYY.parquet (one row per
          episode: length, tasks, data/chunk_index, data/file_index, dataset_from_index/_to_index and,
          per video key, videos/<key>/chunk_index, file_index, from_timestamp, to_timestamp);
          data/chunk-XXX/file-YYY.parquet and videos/<key>/chunk-XXX/file-YYY.mp4 hold many episodes
    v2.x: meta/episodes.jsonl, meta/tasks.jsonl; data/chunk-XXX/episode_NNNNNN.parquet and
          videos/chunk-XXX/<key>/episode_NNNNNN.mp4, one file per episode

Feature dtypes: numeric (``float32``, ``int64``, ``bool``, ...) columns of the data Parquet,
``video`` (MP4 streams, decoded by :mod:`lfm_policy.datasets.lerobot_video`) and ``image`` (PNG bytes
in the Parquet). Every error names the file, the episode and the key.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets.lerobot_video import decode_window, video_stream_info
from lfm_policy.errors import DataError

VERSIONS = ("v2.0", "v2.1", "v3.0")
#: Columns LeRobot adds to every frame (not features a policy reads).
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


@dataclasses.dataclass
class Episode:
    """Where one episode lives.

    Attributes:
        index: LeRobot ``episode_index``.
        length: Frames.
        tasks: Its task strings.
        data_file: The Parquet file with its rows.
        rows: ``(from, to)`` global ``index`` range inside ``data_file`` (v3.0), None for one file per episode.
        videos: Per video key: (MP4 file, time of the episode's first frame in it).

    """

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    rows: tuple[int, int] | None
    videos: dict[str, tuple[Path, float]]


def is_lerobot_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with ``meta/info.json``."""
    return (Path(path) / "meta" / "info.json").is_file()


class LeRobotFolder:
    """A LeRobot dataset folder on disk, read lazily.

    Args:
        root: The folder (the one holding ``meta/``).

    Raises:
        DataError: No or malformed ``meta/info.json``, an unknown ``codebase_version``, missing episode
            tables, or a feature whose dtype/shape cannot be read.

    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DataError(f"{self.root}: not a LeRobot dataset folder (no meta/info.json)")
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{info_path}: not valid JSON: {e}") from None
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in VERSIONS:
            raise DataError(f"{info_path}: codebase_version {self.version!r} is not one this reader knows "
                            f"({', '.join(VERSIONS)})")
        for field in ("fps", "features", "data_path"):
            if field not in self.info:
                raise DataError(f"{info_path}: missing field {field!r}")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        for name, ft in self.features.items():
            if "dtype" not in ft or "shape" not in ft:
                raise DataError(f"{info_path}: feature {name!r} has no dtype or shape")
        self.episodes: list[Episode] = self._episodes_v3() if self.version == "v3.0" else self._episodes_v2()
        self._table_cache: tuple[Path, Any] | None = None

    # ------------------------------------------------------------------------------ features
    @property
    def video_keys(self) -> list[str]:
        """Features stored as MP4."""
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def camera_keys(self) -> list[str]:
        """Features that are images (MP4 videos or PNGs in the Parquet)."""
        return [k for k, f in self.features.items() if f["dtype"] in ("video", "image")]

    @property
    def data_keys(self) -> list[str]:
        """Every feature but LeRobot's index columns (what an import can keep)."""
        return [k for k in self.features if k not in INDEX_COLUMNS]

    def shape(self, key: str) -> tuple[int, ...]:
        """Per-frame shape of a feature as stored (images: (H, W, C))."""
        ft = self.features[key]
        shape = tuple(int(s) for s in ft["shape"])
        if ft["dtype"] in ("video", "image") and len(shape) == 3:
            names = list(ft.get("names") or [])
            if names[:1] == ["channels"] or (shape[0] in (1, 3) and shape[-1] not in (1, 3)):
                shape = (shape[1], shape[2], shape[0])  # (C, H, W) declared: frames are HWC
        return shape

    # ------------------------------------------------------------------------------ episodes
    def _read_parquet(self, path: Path, columns: Sequence[str] | None = None, *, where: str = ""):
        import pyarrow.parquet as pq

        if not path.is_file():
            raise DataError(f"{path}{f' ({where})' if where else ''}: file missing")
        try:
            return pq.read_table(path, columns=list(columns) if columns is not None else None)
        except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid/OSError for damaged files)
            raise DataError(f"{path}{f' ({where})' if where else ''}: cannot read Parquet: "
                            f"{type(e).__name__}: {e}") from None

    def _episodes_v3(self) -> list[Episode]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DataError(f"{self.root / 'meta' / 'episodes'}: no episode tables (chunk-*/file-*.parquet)")
        rows: list[dict[str, Any]] = []
        for f in files:
            rows.extend(self._read_parquet(f).to_pylist())
        out = []
        for r in sorted(rows, key=lambda r: int(r["episode_index"])):
            i = int(r["episode_index"])
            try:
                data = self.root / self.info["data_path"].format(chunk_index=int(r["data/chunk_index"]),
                                                                 file_index=int(r["data/file_index"]))
                videos = {}
                for k in self.video_keys:
                    path = self.root / self.info["video_path"].format(
                        video_key=k, chunk_index=int(r[f"videos/{k}/chunk_index"]),
                        file_index=int(r[f"videos/{k}/file_index"]))
                    videos[k] = (path, float(r[f"videos/{k}/from_timestamp"]))
                rng = (int(r["dataset_from_index"]), int(r["dataset_to_index"]))
            except KeyError as e:
                raise DataError(f"{self.root / 'meta' / 'episodes'}: episode {i}: column {e.args[0]!r} "
                                "missing") from None
            out.append(Episode(i, int(r["length"]), list(r.get("tasks") or []), data, rng, videos))
        return out

    def _episodes_v2(self) -> list[Episode]:
        path = self.root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: file missing")
        chunks = int(self.info.get("chunks_size", 1000))
        out = []
        for n, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                i, length = int(r["episode_index"]), int(r["length"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}: line {n + 1}: not an episode record ({e})") from None
            fmt = {"episode_chunk": i // chunks, "episode_index": i}
            data = self.root / self.info["data_path"].format(**fmt)
            videos = {k: (self.root / self.info["video_path"].format(video_key=k, **fmt), 0.0)
                      for k in self.video_keys}  # fmt: skip
            out.append(Episode(i, length, list(r.get("tasks") or []), data, None, videos))
        return sorted(out, key=lambda e: e.index)

    def episode(self, index: int) -> Episode:
        """The episode with LeRobot ``episode_index`` ``index``."""
        for ep in self.episodes:
            if ep.index == index:
                return ep
        raise DataError(f"{self.root}: no episode {index} (episodes {self.episodes[0].index}…{self.episodes[-1].index})"
                        if self.episodes else f"{self.root}: no episodes")

    # ------------------------------------------------------------------------------ frames
    def _table(self, path: Path, where: str):
        if self._table_cache is None or self._table_cache[0] != path:
            self._table_cache = (path, self._read_parquet(path, where=where))
        return self._table_cache[1]

    def read_episode(self, index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One episode's features as arrays (T, *shape); images uint8 (T, H, W, C).

        Args:
            index: LeRobot ``episode_index``.
            keys: Features to read (default :attr:`data_keys`), plus any of :data:`INDEX_COLUMNS`.

        Raises:
            DataError: A feature missing from the Parquet or its video, a column of the wrong size,
                fewer rows or frames than the episode's ``length`` — naming file, episode and key.

        """
        ep = self.episode(index)
        keys = list(self.data_keys if keys is None else keys)
        unknown = [k for k in keys if k not in self.features and k not in INDEX_COLUMNS]
        if unknown:
            raise DataError(f"{self.root}: unknown feature {unknown[0]!r} (features: {', '.join(self.features)})")
        where = f"episode {index}"
        table = self._table(ep.data_file, where)
        if ep.rows is not None:  # v3.0: the rows of this episode inside a shared file
            import pyarrow.compute as pc

            if "episode_index" not in table.column_names:
                raise DataError(f"{ep.data_file} ({where}): column 'episode_index' missing")
            table = table.filter(pc.equal(table["episode_index"], index))
        if table.num_rows != ep.length:
            raise DataError(f"{ep.data_file} ({where}): {table.num_rows} rows, the episode table says "
                            f"length {ep.length}")
        out: dict[str, np.ndarray] = {}
        for k in keys:
            dtype = self.features.get(k, {}).get("dtype")
            if dtype == "video":
                path, start = ep.videos[k]
                frames = decode_window(path, start, ep.length, self.fps, where=f"{where}, key {k!r}")
                self._check_shape(frames, k, path, where)
                out[k] = frames
                continue
            if k not in table.column_names:
                raise DataError(f"{ep.data_file} ({where}): feature {k!r} listed in meta/info.json but not in "
                                "the file")
            col = table[k].combine_chunks()
            out[k] = self._images(col, k, ep.data_file, where) if dtype == "image" else \
                self._numeric(col, k, ep.data_file, where)
        return out

    def _check_shape(self, arr: np.ndarray, key: str, path: Path, where: str) -> None:
        want = self.shape(key)
        if arr.shape[1:] != want:
            raise DataError(f"{path} ({where}): key {key!r} frames have shape {arr.shape[1:]}, meta/info.json "
                            f"says {want}")

    def _numeric(self, col, key: str, path: Path, where: str) -> np.ndarray:
        import pyarrow as pa

        n, shape = len(col), self.shape(key) if key in self.features else ()
        dtype = np.dtype(self.features[key]["dtype"]) if key in self.features else None
        values = col
        while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) \
                or pa.types.is_large_list(values.type):
            values = values.flatten()
        arr = values.to_numpy(zero_copy_only=False)
        size = int(np.prod(shape)) if shape else 1
        if arr.size != n * size:
            raise DataError(f"{path} ({where}): key {key!r} has {arr.size} values for {n} frames, meta/info.json "
                            f"says shape {list(shape)}")
        arr = arr.reshape(n) if key in INDEX_COLUMNS else arr.reshape(n, *shape)  # index columns: (T,)
        return arr.astype(dtype) if dtype is not None and arr.dtype != dtype else arr

    def _images(self, col, key: str, path: Path, where: str) -> np.ndarray:
        from PIL import Image

        frames = []
        for k, item in enumerate(col.to_pylist()):
            try:
                data = item["bytes"] if isinstance(item, dict) else item
                frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{path} ({where}): key {key!r} frame {k}: not a readable image ({e})") from None
        arr = np.stack(frames)
        self._check_shape(arr, key, path, where)
        return arr

    # ------------------------------------------------------------------------------ summary
    def describe(self) -> dict[str, Any]:
        """What ``lfm-policy data info`` prints: version, fps, episodes, frames, tasks, features, videos."""
        tasks = sorted({t for ep in self.episodes for t in ep.tasks})
        videos = {}
        for k in self.video_keys:
            first = self.episodes[0].videos[k][0] if self.episodes else None
            videos[k] = video_stream_info(first) if first is not None and first.is_file() else None
        lengths = [ep.length for ep in self.episodes]
        return {"path": str(self.root), "format": f"LeRobot {self.version}", "fps": self.fps,
                "robot_type": self.info.get("robot_type"), "episodes": len(self.episodes),
                "frames": int(sum(lengths)), "length_min": min(lengths, default=0),
                "length_max": max(lengths, default=0), "tasks": tasks,
                "features": {k: {"dtype": f["dtype"], "shape": list(self.shape(k))} for k, f in self.features.items()},
                "videos": videos}


def render_lerobot(info: dict[str, Any]) -> str:
    """The text ``lfm-policy data info`` prints for a LeRobot folder (from :meth:`LeRobotFolder.describe`)."""
    lines = [f"{info['path']}: {info['format']}, {info['fps']:g} fps, robot {info['robot_type'] or 'unknown'}",
             f"episodes {info['episodes']}, frames {info['frames']} (length {info['length_min']}–{info['length_max']})",
             f"tasks ({len(info['tasks'])}): " + "; ".join(info["tasks"][:10])
             + (" …" if len(info["tasks"]) > 10 else ""),
             "features:"]
    for k, f in info["features"].items():
        extra = ""
        v = info["videos"].get(k)
        if v:
            extra = (f"  video {v['codec']} (decoder {v['decoder']}) {v['pix_fmt']} {v['width']}x{v['height']} "
                     f"@ {v['fps']:g} fps")
        lines.append(f"  {k:<32} {f['dtype']:<8} {tuple(f['shape'])}{extra}")
    return "\n".join(lines)
