"""Storage backends of :class:`lfm_policy.datasets.replay_buffer.ReplayBuffer`: numpy (memory) and zarr 3.

Both expose the same small interface (``ends``, ``keys``, ``array``, ``chunks``, attrs, per-episode
attrs, ``append_episode``). The zarr backend implements the write order and the open-time checks and
repair described in ``replay_buffer``'s module docstring.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from lfm_policy.datasets.episode import is_image
from lfm_policy.errors import DataError

FORMAT_KEY = "lfm_policy_format"
FORMAT = {"name": "lfm_policy.replay_buffer", "version": 1}
IMAGE_FRAMES_PER_CHUNK = 4
LOWDIM_CHUNK_BYTES = 1 << 20
_PARTIAL_RE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temporary files


def default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Chunk shape for a new ``data/<key>``: images 4 frames, other arrays about 1 MiB of rows."""
    if is_image(shape, dtype):
        return (IMAGE_FRAMES_PER_CHUNK, *shape[1:])
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    return (max(1, LOWDIM_CHUNK_BYTES // row_bytes), *shape[1:])


def compressor_for(dtype: np.dtype) -> BloscCodec:
    """Blosc/zstd; bit-shuffle for bytes (images), byte-shuffle for wider types."""
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


class MemoryBackend:
    """numpy arrays grown by doubling; ``array(key)`` is a view of the committed rows."""

    path = None
    display = None

    def __init__(self, source: str | None = None) -> None:
        self.source = source  # the file this copy came from, for messages
        self._arrays: dict[str, np.ndarray] = {}
        self._ends: list[int] = []
        self._ends_arr = np.zeros(0, dtype=np.int64)
        self._attrs: dict[str, Any] = {}
        self._episode_attrs: list[dict[str, Any]] = []

    @property
    def ends(self) -> np.ndarray:
        """(n_episodes,) int64 committed episode ends."""
        return self._ends_arr

    def keys(self) -> list[str]:
        """Sorted data keys."""
        return sorted(self._arrays)

    def array(self, key: str) -> np.ndarray:
        """Committed rows of ``key``."""
        n = self._ends[-1] if self._ends else 0
        return self._arrays[key][:n]

    def chunks(self, key: str) -> None:
        """Chunk shape (``None``: not chunked)."""
        return None

    def read_attrs(self) -> dict[str, Any]:
        """User attrs (without the format marker)."""
        return dict(self._attrs)

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """Replace the user attrs."""
        self._attrs = dict(attrs)

    def read_episode_attrs(self, i: int) -> dict[str, Any]:
        """Per-episode attrs of episode ``i`` (``{}`` if none)."""
        return dict(self._episode_attrs[i])

    def append_episode(self, episode: Mapping[str, np.ndarray], ep_attrs: dict[str, Any],
                       chunks: Mapping[str, tuple[int, ...]]) -> None:
        """Append a validated episode (capacity doubles as needed)."""
        start = self._ends[-1] if self._ends else 0
        stop = start + len(next(iter(episode.values())))
        for key, arr in episode.items():
            store = self._arrays.get(key)
            if store is None or store.shape[0] < stop:
                grown = np.empty((max(stop, 2 * (0 if store is None else store.shape[0])), *arr.shape[1:]),
                                 dtype=arr.dtype if store is None else store.dtype)
                if store is not None:
                    grown[:start] = store[:start]
                self._arrays[key] = store = grown
            store[start:stop] = arr
        self._episode_attrs.append(dict(ep_attrs))
        self._ends.append(stop)
        self._ends_arr = np.asarray(self._ends, dtype=np.int64)

    def load(self, arrays: dict[str, np.ndarray], ends: np.ndarray, episode_attrs: list[dict[str, Any]]) -> None:
        """Adopt already-concatenated arrays (used by ``copy_to_memory``)."""
        self._arrays = dict(arrays)
        self._ends = [int(e) for e in ends]
        self._ends_arr = np.asarray(self._ends, dtype=np.int64)
        self._episode_attrs = [dict(a) for a in episode_attrs]


class ZarrBackend:
    """A zarr 3 group on local disk (``path``); ``display`` is the name used in messages."""

    def __init__(self, group: zarr.Group, path: Path, display: Path, ends: np.ndarray):
        self._group = group
        self.path = path
        self.display = display
        self._ends = ends
        self._arrays: dict[str, Any] = {}

    @classmethod
    def create(cls, path: Path, *, display: Path) -> ZarrBackend:
        """Create an empty buffer at ``path`` (which must not exist)."""
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.put({FORMAT_KEY: FORMAT})
        group.require_group("data")
        group.require_group("meta/episode_attrs")
        group.create_array("meta/episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0,
                           compressors=compressor_for(np.int64))
        return cls(group, path, display, np.zeros(0, dtype=np.int64))

    @classmethod
    def open(cls, path: Path, *, writable: bool) -> ZarrBackend:
        """Open and check an existing buffer; when ``writable``, repair an interrupted write."""
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such replay buffer")
        try:
            group = zarr.open_group(str(path), mode="r+" if writable else "r")
            data = group["data"]
            ends_arr = group["meta/episode_ends"]
        except KeyError as e:
            raise DataError(f"{path}: not a replay buffer (missing {e.args[0]!r}; expected data/ and "
                            "meta/episode_ends)") from e
        except Exception as e:
            raise DataError(f"{path}: not a readable zarr replay buffer ({type(e).__name__}: {e})") from e
        fmt = group.attrs.get(FORMAT_KEY, FORMAT)
        if not isinstance(fmt, dict) or int(fmt.get("version", 0)) > FORMAT["version"]:
            raise DataError(f"{path}: unsupported replay buffer format {fmt!r} (this version reads "
                            f"version ≤ {FORMAT['version']})")
        try:
            ends = np.asarray(ends_arr[:])
        except Exception as e:
            raise DataError(f"{path}: key 'meta/episode_ends' cannot be read ({type(e).__name__}: {e})") from e
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            raise DataError(f"{path}: key 'meta/episode_ends' must be a 1-D integer array, got "
                            f"{ends.dtype} {ends.shape}")
        rows = {}
        for key in data.array_keys():
            arr = data[key]
            if arr.ndim < 1:
                raise DataError(f"{path}: key 'data/{key}' is a scalar; expected (n_steps, ...)")
            rows[key] = arr.shape[0]
        n_valid = _committed_prefix(ends.astype(np.int64), rows, path)
        self = cls(group, path, path, ends[:n_valid].astype(np.int64))
        if writable:
            self._repair(n_valid, len(ends))
        return self

    def _repair(self, n_valid: int, n_stored: int) -> None:
        """Drop the trace of an interrupted write so that appending continues cleanly."""
        ends = self._group["meta/episode_ends"]
        if n_stored > n_valid:
            ends[n_valid:n_stored] = 0  # clear stale values left in the retained chunk
            ends.resize((n_valid,))
        n_steps = int(self._ends[-1]) if n_valid else 0
        for key in self.keys():
            arr = self.array(key)
            if arr.shape[0] > n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        meta = self._group["meta"]
        if "episode_attrs" in meta:
            for name in list(meta["episode_attrs"].group_keys()):
                if not name.isdigit() or int(name) >= n_valid:
                    del meta["episode_attrs"][name]
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                if _PARTIAL_RE.search(name):
                    os.unlink(os.path.join(root, name))

    @property
    def ends(self) -> np.ndarray:
        """(n_episodes,) int64 committed episode ends."""
        return self._ends

    def keys(self) -> list[str]:
        """Sorted data keys."""
        return sorted(self._group["data"].array_keys())

    def array(self, key: str) -> Any:
        """The ``data/<key>`` zarr array (may hold uncommitted rows past the last episode end)."""
        if key not in self._arrays:
            self._arrays[key] = self._group[f"data/{key}"]
        return self._arrays[key]

    def chunks(self, key: str) -> tuple[int, ...]:
        """Chunk shape of ``data/<key>``."""
        return tuple(self.array(key).chunks)

    def read_attrs(self) -> dict[str, Any]:
        """User attrs (without the format marker)."""
        return {k: v for k, v in self._group.attrs.asdict().items() if k != FORMAT_KEY}

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """Replace the user attrs."""
        fmt = self._group.attrs.get(FORMAT_KEY, FORMAT)
        self._group.attrs.put({**attrs, FORMAT_KEY: fmt})

    def read_episode_attrs(self, i: int) -> dict[str, Any]:
        """Per-episode attrs of episode ``i`` (``{}`` if none)."""
        name = f"meta/episode_attrs/{i}"
        try:
            return self._group[name].attrs.asdict()
        except KeyError:
            return {}

    def append_episode(self, episode: Mapping[str, np.ndarray], ep_attrs: dict[str, Any],
                       chunks: Mapping[str, tuple[int, ...]]) -> None:
        """Append a validated episode: rows, then per-episode attrs, then the commit."""
        index = len(self._ends)
        start = int(self._ends[-1]) if index else 0
        stop = start + len(next(iter(episode.values())))
        data = self._group["data"]
        for key, arr in episode.items():  # 1. rows (invisible to readers until step 3)
            if key not in data:
                self._arrays[key] = data.create_array(
                    key, shape=(0, *arr.shape[1:]), dtype=arr.dtype,
                    chunks=tuple(int(c) for c in chunks.get(key, default_chunks(arr.shape, arr.dtype))),
                    compressors=compressor_for(arr.dtype), fill_value=0)
            target = self.array(key)
            target.resize((stop, *arr.shape[1:]))
            target[start:stop] = arr
        if ep_attrs:  # 2. per-episode attrs
            self._group.create_group(f"meta/episode_attrs/{index}", attributes=ep_attrs, overwrite=True)
        ends = self._group["meta/episode_ends"]  # 3. commit
        ends.resize((index + 1,))
        ends[index] = stop
        self._ends = np.append(self._ends, np.int64(stop))


def _committed_prefix(ends: np.ndarray, rows: dict[str, int], path: Path) -> int:
    """Number of committed episodes in ``ends``; raise DataError if the array is inconsistent.

    A trailing entry not greater than the previous end (zarr's fill value 0 where the commit was
    interrupted between growing the array and writing the value) is an uncommitted episode.
    """
    n = len(ends)
    if n and ends[-1] <= (ends[-2] if n > 1 else 0):
        n -= 1
    prev = 0
    for i in range(n):
        if ends[i] <= prev:
            raise DataError(f"{path}: key 'meta/episode_ends' is not increasing at episode {i} "
                            f"({int(ends[i])} after {prev}); the buffer is corrupt")
        prev = int(ends[i])
    for key, n_rows in sorted(rows.items()):
        if n_rows < prev:
            raise DataError(f"{path}: key 'data/{key}' has {n_rows} steps but meta/episode_ends needs "
                            f"{prev}; the buffer is truncated or corrupt")
    return n
