"""Storage backends of :class:`lfm_policy.datasets.replay_buffer.ReplayBuffer`: numpy (memory) and zarr 3.

Both expose the same small interface (``ends``, ``keys``, ``array``, ``read``, ``chunks``, attrs,
per-episode attrs, final observations, ``append_episode``). The zarr backend
(:mod:`lfm_policy.datasets.zarr_backend`) implements the write order and the open-time checks and
repair described in ``replay_buffer``'s module docstring; this module holds the numpy backend and
the on-disk format constants both share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lfm_policy.datasets.episode import is_image

FORMAT_KEY = "lfm_policy_format"
#: Version 2: every array is checksummed (crc32c after Blosc) and every chunk is stored, even one of
#: zeros. Version 1 (no checksums, all-zero chunks skipped) is still read.
FORMAT = {"name": "lfm_policy.replay_buffer", "version": 2}
IMAGE_FRAMES_PER_CHUNK = 4
LOWDIM_CHUNK_BYTES = 1 << 20


def default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Chunk shape for a new ``data/<key>``: images 4 frames, other arrays about 1 MiB of rows."""
    if is_image(shape, dtype):
        return (IMAGE_FRAMES_PER_CHUNK, *shape[1:])
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    return (max(1, LOWDIM_CHUNK_BYTES // row_bytes), *shape[1:])


def compressor_for(dtype: np.dtype) -> Any:
    """Blosc/zstd; bit-shuffle for bytes (images), byte-shuffle for wider types."""
    from zarr.codecs import BloscCodec

    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


def array_options(dtype: np.dtype, version: int) -> dict[str, Any]:
    """``create_array`` keyword arguments of a buffer array in format ``version``.

    Version 2: Blosc then ``Crc32cCodec`` (a checksum of the stored bytes, checked on every read),
    and ``write_empty_chunks`` so that a chunk of fill values is stored too and a missing chunk
    always means damage. Version 1: Blosc only.
    """
    from zarr.codecs import Crc32cCodec

    codecs = [compressor_for(dtype), Crc32cCodec()] if version >= 2 else [compressor_for(dtype)]
    return {"compressors": codecs, "fill_value": 0, "config": {"write_empty_chunks": True}}


class MemoryBackend:
    """numpy arrays grown by doubling; ``array(key)`` is a view of the committed rows."""

    path = None
    display = None
    format_version = None
    checksummed = False

    def __init__(self, source: str | None = None) -> None:
        self.source = source  # the file this copy came from, for messages
        self._arrays: dict[str, np.ndarray] = {}
        self._ends: list[int] = []
        self._ends_arr = np.zeros(0, dtype=np.int64)
        self._attrs: dict[str, Any] = {}
        self._episode_attrs: list[dict[str, Any]] = []
        self._final: dict[str, list[np.ndarray]] = {}

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

    def read(self, key: str, lo: int, hi: int, where: str) -> np.ndarray:
        """Rows ``[lo, hi)`` of ``key`` (a view)."""
        return self._arrays[key][lo:hi]

    def chunks(self, key: str) -> None:
        """Chunk shape (``None``: not chunked)."""
        return None

    def final_obs_keys(self) -> list[str]:
        """Sorted keys that have a per-episode final observation."""
        return sorted(self._final)

    def read_final_obs(self, i: int, where: str) -> dict[str, np.ndarray]:
        """Final observation of episode ``i`` (``{}`` when the buffer stores none)."""
        return {k: v[i] for k, v in sorted(self._final.items())}

    def read_attrs(self) -> dict[str, Any]:
        """User attrs (without the format marker)."""
        return dict(self._attrs)

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """Replace the user attrs."""
        self._attrs = dict(attrs)

    def read_episode_attrs(self, i: int) -> dict[str, Any]:
        """Per-episode attrs of episode ``i`` (``{}`` if none)."""
        return dict(self._episode_attrs[i])

    def append_episode(self, episode: Mapping[str, np.ndarray], final_obs: Mapping[str, np.ndarray],
                       ep_attrs: dict[str, Any], chunks: Mapping[str, tuple[int, ...]]) -> None:
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
        for key, value in final_obs.items():
            self._final.setdefault(key, []).append(np.array(value))
        self._episode_attrs.append(dict(ep_attrs))
        self._ends.append(stop)
        self._ends_arr = np.asarray(self._ends, dtype=np.int64)

    def load(self, arrays: dict[str, np.ndarray], ends: np.ndarray, episode_attrs: list[dict[str, Any]],
             final_obs: Mapping[str, np.ndarray] | None = None) -> None:
        """Adopt already-concatenated arrays (``copy_to_memory``); ``final_obs`` is ``{key: (n_episodes, ...)}``."""
        self._arrays = dict(arrays)
        self._ends = [int(e) for e in ends]
        self._ends_arr = np.asarray(self._ends, dtype=np.int64)
        self._episode_attrs = [dict(a) for a in episode_attrs]
        self._final = {k: list(v) for k, v in (final_obs or {}).items()}
