"""The on-disk backend of :class:`~lfm_policy.datasets.replay_buffer.ReplayBuffer`: a zarr 3 group on local disk.

It implements the write order (rows, final observations, per-episode attrs, then the commit), the
checks made when a store is opened (structure, committed prefix, missing chunks) and the repair of an
interrupted write described in ``replay_buffer``'s module docstring. Reads go through
:func:`lfm_policy.datasets.chunks.read_rows`, so a damaged chunk raises a DataError that names it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from lfm_policy.datasets.buffer_backends import FORMAT, FORMAT_KEY, array_options, default_chunks
from lfm_policy.datasets.chunks import ChunkRef, bad_chunks, chunk_error, missing_chunks, read_rows
from lfm_policy.errors import DataError

log = logging.getLogger(__name__)
_PARTIAL_RE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temporary files
_EMPTY_OK = {"write_empty_chunks": True}


def rewrite_hint(path: Path | str, *, missing_as_zero: bool = True) -> str:
    """The command that re-writes a format-1 store as format 2 (optionally reading missing chunks as zeros)."""
    p = Path(path)
    flag = " --missing-as-zero" if missing_as_zero else ""
    return f"lfm-policy data rewrite {p} {p.with_name(p.stem + '-v2' + p.suffix)}{flag}"


def missing_error(path: Path | str, key: str, refs: list[ChunkRef], version: int) -> DataError:
    """DataError for missing chunks of ``key``: names the first, counts the rest, explains format 1."""
    more = f" (and {len(refs) - 1} more missing chunks; `lfm-policy data check` lists them)" if len(refs) > 1 else ""
    msg = f"{path}: key {key!r}: {refs[0].describe()} is missing{more}"
    if version < 2:
        msg += ("; stores written before format 2 skipped chunks that held only zeros, so it may be an all-zero "
                f"chunk rather than damage: if zeros are right, re-write the store with `{rewrite_hint(path)}`")
    else:
        msg += "; format-2 stores keep every chunk, so the store is damaged (restore it from a copy)"
    return DataError(msg)


class ZarrBackend:
    """A zarr 3 group on local disk (``path``); ``display`` is the name used in messages."""

    def __init__(self, group: zarr.Group, path: Path, display: Path, ends: np.ndarray, version: int):
        self._group = group
        self.path = path
        self.display = display
        self._ends = ends
        self.format_version = version
        self._arrays: dict[str, Any] = {}
        self._keys = sorted(group["data"].array_keys())
        self._final_keys = sorted(group["meta/final_obs"].array_keys()) if "final_obs" in group["meta"] else []

    @classmethod
    def create(cls, path: Path, *, display: Path) -> ZarrBackend:
        """Create an empty format-2 buffer in directory ``path`` (absent or empty)."""
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.put({FORMAT_KEY: FORMAT})
        group.require_group("data")
        group.require_group("meta/episode_attrs")
        group.create_array("meta/episode_ends", shape=(0,), chunks=(4096,), dtype="int64",
                           **array_options(np.int64, FORMAT["version"]))
        return cls(group, path, display, np.zeros(0, dtype=np.int64), FORMAT["version"])

    @classmethod
    def open(cls, path: Path, *, writable: bool, display: Path | None = None,
             missing_as_zero: bool = False) -> ZarrBackend:
        """Open and check an existing buffer; when ``writable``, repair an interrupted write.

        Args:
            path: The store's directory.
            writable: Open for appending (repairs the trace of an interrupted write).
            display: How messages name the store (default ``path``).
            missing_as_zero: Format-1 stores: accept missing chunks (read as zeros) instead of raising. Ignored
                for format 2, where a missing chunk is always damage.

        """
        display = path if display is None else display
        if not path.exists():
            raise FileNotFoundError(f"{display}: no such replay buffer")
        try:
            group = zarr.open_group(str(path), mode="r+" if writable else "r")
            data = group["data"]
            ends_arr = group["meta/episode_ends"]
        except KeyError as e:
            raise DataError(f"{display}: not a replay buffer (missing {e.args[0]!r}; expected data/ and "
                            "meta/episode_ends)") from e
        except Exception as e:
            raise DataError(f"{display}: not a readable zarr replay buffer ({type(e).__name__}: {e})") from e
        fmt = group.attrs.get(FORMAT_KEY, {"version": 1})
        if not isinstance(fmt, dict) or int(fmt.get("version", 0)) > FORMAT["version"]:
            raise DataError(f"{display}: unsupported replay buffer format {fmt!r} (this version reads "
                            f"version ≤ {FORMAT['version']})")
        version = int(fmt.get("version", 1))
        allow_missing = missing_as_zero and version < 2  # format 2 keeps every chunk: missing means damage

        def check(arr: Any, rel: str, n_rows: int, key: str) -> None:
            refs = missing_chunks(arr, path / rel, n_rows)
            if refs and not allow_missing:
                raise missing_error(display, key, refs, version)
            if refs:
                log.warning("%s: key %r: %d missing chunks read as zeros (first: %s)", display, key, len(refs),
                            refs[0].describe())

        check(ends_arr, "meta/episode_ends", ends_arr.shape[0] - 1, "meta/episode_ends")  # last: maybe torn
        ends = read_rows(ends_arr, 0, ends_arr.shape[0], where=str(display), key="meta/episode_ends")
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            raise DataError(f"{display}: key 'meta/episode_ends' must be a 1-D integer array, got "
                            f"{ends.dtype} {ends.shape}")
        rows = {}
        for key in data.array_keys():
            arr = data[key]
            if arr.ndim < 1:
                raise DataError(f"{display}: key 'data/{key}' is a scalar; expected (n_steps, ...)")
            rows[key] = arr
        n_valid = _committed_prefix(ends.astype(np.int64), {k: a.shape[0] for k, a in rows.items()}, display)
        n_steps = int(ends[n_valid - 1]) if n_valid else 0
        for key, arr in sorted(rows.items()):
            check(arr, f"data/{key}", n_steps, key)
        if "final_obs" in group["meta"]:
            for key, arr in sorted(group["meta/final_obs"].arrays()):
                if key not in rows or tuple(arr.shape[1:]) != tuple(rows[key].shape[1:]):
                    raise DataError(f"{display}: key 'meta/final_obs/{key}' does not match a data key of the same "
                                    "per-step shape; the buffer is corrupt")
                if arr.shape[0] < n_valid:
                    raise DataError(f"{display}: key 'meta/final_obs/{key}' has {arr.shape[0]} entries but "
                                    f"meta/episode_ends commits {n_valid} episodes; the buffer is truncated or corrupt")
                check(arr, f"meta/final_obs/{key}", n_valid, f"meta/final_obs/{key}")
        self = cls(group, path, display, ends[:n_valid].astype(np.int64), version)
        if writable:
            self._repair(n_valid, len(ends))
        return self

    def _repair(self, n_valid: int, n_stored: int) -> None:
        """Drop the trace of an interrupted write so that appending continues cleanly."""
        ends = self._group["meta/episode_ends"].with_config(_EMPTY_OK)
        if n_stored > n_valid:
            ends[n_valid:n_stored] = 0  # clear stale values left in the retained chunk
            ends.resize((n_valid,))
        n_steps = int(self._ends[-1]) if n_valid else 0
        for key in self.keys():
            arr = self.array(key)
            if arr.shape[0] > n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        for key in self._final_keys:
            arr = self._final_array(key)
            if arr.shape[0] > n_valid:
                arr.resize((n_valid, *arr.shape[1:]))
        meta = self._group["meta"]
        if "episode_attrs" in meta:
            for name in list(meta["episode_attrs"].group_keys()):
                if not name.isdigit() or int(name) >= n_valid:
                    del meta["episode_attrs"][name]
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                if _PARTIAL_RE.search(name):
                    os.unlink(os.path.join(root, name))

    # ------------------------------------------------------------------ reading
    @property
    def ends(self) -> np.ndarray:
        """(n_episodes,) int64 committed episode ends."""
        return self._ends

    @property
    def checksummed(self) -> bool:
        """True when every array of the store carries a crc32c checksum per chunk."""
        from zarr.codecs import Crc32cCodec

        arrays = [self._group["meta/episode_ends"], *(self.array(k) for k in self._keys),
                  *(self._final_array(k) for k in self._final_keys)]
        return all(any(isinstance(c, Crc32cCodec) for c in a.compressors) for a in arrays)

    def keys(self) -> list[str]:
        """Sorted data keys."""
        return list(self._keys)

    def array(self, key: str) -> Any:
        """The ``data/<key>`` zarr array (may hold uncommitted rows past the last episode end)."""
        if key not in self._arrays:
            self._arrays[key] = self._group[f"data/{key}"].with_config(_EMPTY_OK)
        return self._arrays[key]

    def _final_array(self, key: str) -> Any:
        name = f"meta/final_obs/{key}"
        if name not in self._arrays:
            self._arrays[name] = self._group[name].with_config(_EMPTY_OK)
        return self._arrays[name]

    def read(self, key: str, lo: int, hi: int, where: str) -> np.ndarray:
        """Rows ``[lo, hi)`` of ``data/<key>``; a damaged chunk raises a DataError naming it."""
        return read_rows(self.array(key), lo, hi, where=where, key=key)

    def chunks(self, key: str) -> tuple[int, ...]:
        """Chunk shape of ``data/<key>``."""
        return tuple(self.array(key).chunks)

    def final_obs_keys(self) -> list[str]:
        """Sorted keys that have a per-episode final observation (``meta/final_obs/<key>``)."""
        return list(self._final_keys)

    def read_final_obs(self, i: int, where: str) -> dict[str, np.ndarray]:
        """Final observation of episode ``i`` (``{}`` when the buffer stores none)."""
        return {k: read_rows(self._final_array(k), i, i + 1, where=where, key=f"meta/final_obs/{k}")[0]
                for k in self._final_keys}

    def read_attrs(self) -> dict[str, Any]:
        """User attrs (without the format marker)."""
        return {k: v for k, v in self._group.attrs.asdict().items() if k != FORMAT_KEY}

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """Replace the user attrs."""
        fmt = self._group.attrs.get(FORMAT_KEY, {**FORMAT, "version": self.format_version})
        self._group.attrs.put({**attrs, FORMAT_KEY: fmt})

    def read_episode_attrs(self, i: int) -> dict[str, Any]:
        """Per-episode attrs of episode ``i`` (``{}`` if none)."""
        name = f"meta/episode_attrs/{i}"
        try:
            return self._group[name].attrs.asdict()
        except KeyError:
            return {}

    # ------------------------------------------------------------------ writing
    def _write(self, arr: Any, lo: int, hi: int, values: np.ndarray, key: str) -> None:
        try:
            arr[lo:hi] = values
        except Exception:  # a partial chunk is read back before it is rewritten: it may be damaged
            bad = bad_chunks(arr, lo, hi)
            if bad:
                raise chunk_error(str(self.display), key, *bad[0]) from bad[0][1]
            raise

    def append_episode(self, episode: Mapping[str, np.ndarray], final_obs: Mapping[str, np.ndarray],
                       ep_attrs: dict[str, Any], chunks: Mapping[str, tuple[int, ...]]) -> None:
        """Append a validated episode: rows, final observations, per-episode attrs, then the commit."""
        index = len(self._ends)
        start = int(self._ends[-1]) if index else 0
        stop = start + len(next(iter(episode.values())))
        data = self._group["data"]
        if index == 0:  # the first episode fixes the final-obs keys: drop those of an uncommitted first write
            for key in [k for k in self._final_keys if k not in final_obs]:
                del self._group["meta/final_obs"][key]
                self._arrays.pop(f"meta/final_obs/{key}", None)
                self._final_keys.remove(key)
        for key, arr in episode.items():  # 1. rows (invisible to readers until step 4)
            if key not in self._keys:
                data.create_array(key, shape=(0, *arr.shape[1:]), dtype=arr.dtype,
                                  chunks=tuple(int(c) for c in chunks.get(key, default_chunks(arr.shape, arr.dtype))),
                                  **array_options(arr.dtype, self.format_version))
                self._keys = sorted([*self._keys, key])
            target = self.array(key)
            target.resize((stop, *arr.shape[1:]))
            self._write(target, start, stop, arr, key)
        for key, value in final_obs.items():  # 2. final observations
            if key not in self._final_keys:
                shape = (0, *value.shape)
                self._group.require_group("meta/final_obs").create_array(
                    key, shape=shape, dtype=value.dtype, chunks=default_chunks(shape, value.dtype),
                    **array_options(value.dtype, self.format_version))
                self._final_keys = sorted([*self._final_keys, key])
            target = self._final_array(key)
            target.resize((index + 1, *value.shape))
            self._write(target, index, index + 1, value[None], f"meta/final_obs/{key}")
        if ep_attrs:  # 3. per-episode attrs
            self._group.create_group(f"meta/episode_attrs/{index}", attributes=ep_attrs, overwrite=True)
        ends = self._group["meta/episode_ends"].with_config(_EMPTY_OK)  # 4. commit
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
