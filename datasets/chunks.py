"""Chunk-level integrity of zarr arrays: which chunks must exist, which are missing, which are corrupt.

A replay buffer's arrays are concatenated along axis 0 (steps for ``data/<key>``, episodes for the
``meta`` arrays), and only the rows below the last commit count. These helpers work on such a
*committed prefix* ``[0, n_rows)``:

* :func:`missing_chunks` lists the chunks of the prefix that are not in the store. zarr reads a
  missing chunk as the fill value, without a warning, so a deleted chunk file would otherwise read
  as zeros. Format-2 buffers write every chunk (``write_empty_chunks``), so a missing chunk is damage.
* :func:`read_rows` reads rows and, when zarr fails (a checksum mismatch raises a bare
  ``ValueError`` that does not say where), reads the chunks of the failing range one by one to name
  the bad one in a :class:`~lfm_policy.errors.DataError`.
* :func:`bad_chunks` reads every chunk of a prefix (``lfm-policy data check``).

A chunk is named by its path inside the store (e.g. ``data/action/c/3/0``) and the rows it covers.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.errors import DataError

_CHECKSUM_MESSAGE = "checksum do not match"  # zarr's Crc32cCodec: "Stored and computed checksum do not match"


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of an array: its key (``c/3/0``), store path (``data/action/c/3/0``) and rows ``[lo, hi)``."""

    key: str
    name: str
    lo: int
    hi: int
    unit: str = "steps"

    def describe(self) -> str:
        """``chunk data/action/c/3/0 (steps 3072-4095)``."""
        return f"chunk {self.name} ({self.unit} {self.lo}-{self.hi - 1})"


def array_name(arr: Any) -> str:
    """The array's path inside its store, e.g. ``data/action``."""
    return str(arr.path).strip("/")


def chunk_refs(arr: Any, lo: int, hi: int) -> Iterator[tuple[tuple[int, ...], ChunkRef]]:
    """``(coords, ChunkRef)`` of every chunk holding a row in ``[lo, hi)`` (all chunks of the other axes)."""
    hi = min(hi, arr.shape[0])
    if hi <= lo:
        return
    c0 = arr.chunks[0]
    other = [range(math.ceil(s / c)) for s, c in zip(arr.shape[1:], arr.chunks[1:])]
    prefix = array_name(arr)
    unit = "steps" if prefix.startswith("data/") else "episodes"
    for row_chunk in range(lo // c0, (hi - 1) // c0 + 1):
        for rest in itertools.product(*other):
            coords = (row_chunk, *rest)
            key = arr.metadata.encode_chunk_key(coords)
            yield coords, ChunkRef(key, f"{prefix}/{key}", row_chunk * c0, min((row_chunk + 1) * c0, arr.shape[0]),
                                   unit)


def missing_chunks(arr: Any, array_dir: Path, n_rows: int) -> list[ChunkRef]:
    """Chunks holding rows ``[0, n_rows)`` of ``arr`` that are not in the store (rows past it may be missing).

    Each expected chunk key (``arr.metadata.encode_chunk_key``) is looked up with one ``stat`` in the
    array's directory ``array_dir``. That is exact and fast: for a 3000-chunk camera array it took
    20-40 ms, where zarr's ``nchunks_initialized`` (a listing through its async store layer) took
    0.67 s and an ``os.walk`` of the directory 0.3 s (each chunk sits four directories deep).
    """
    return [ref for _, ref in chunk_refs(arr, 0, n_rows) if not os.path.isfile(os.path.join(array_dir, ref.key))]


def _reason(e: BaseException) -> str:
    if _CHECKSUM_MESSAGE in str(e):
        return "is corrupt: its checksum does not match (the stored bytes changed)"
    return f"cannot be decoded ({type(e).__name__}: {e})"


def bad_chunks(arr: Any, lo: int, hi: int) -> list[tuple[ChunkRef, BaseException]]:
    """Read each chunk holding rows ``[lo, hi)`` on its own; return those that fail, with their error."""
    out = []
    for coords, ref in chunk_refs(arr, lo, hi):
        try:
            arr.get_block_selection(coords)
        except Exception as e:  # zarr/numcodecs raise various types for damaged chunks
            out.append((ref, e))
    return out


def chunk_problem(key: str, ref: ChunkRef, e: BaseException) -> str:
    """``key 'action': chunk data/action/c/3/0 (steps 3072-4095) is corrupt: ...`` for an unreadable chunk."""
    return f"key {key!r}: {ref.describe()} {_reason(e)}"


def chunk_error(where: str, key: str, ref: ChunkRef, e: BaseException) -> DataError:
    """The DataError for an unreadable chunk: ``{where}: {chunk_problem(...)}``."""
    return DataError(f"{where}: {chunk_problem(key, ref, e)}")


def read_rows(arr: Any, lo: int, hi: int, *, where: str, key: str) -> np.ndarray:
    """``np.asarray(arr[lo:hi])``, or a DataError naming the first chunk of the range that cannot be read.

    Args:
        arr: A zarr array.
        lo: First row.
        hi: End row (exclusive).
        where: Message prefix (the store, and the episode if any).
        key: The key as users know it (``"action"``, ``"meta/episode_ends"``).

    """
    try:
        return np.asarray(arr[lo:hi])
    except Exception as e:  # zarr/numcodecs raise various types for damaged chunks
        bad = bad_chunks(arr, lo, hi)
        if bad:
            raise chunk_error(where, key, *bad[0]) from bad[0][1]
        raise DataError(f"{where}: key {key!r}: cannot read stored data ({type(e).__name__}: {e})") from e


def row_range(selection: Any, n_rows: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` that an indexing expression on axis 0 can touch (all rows if unknown)."""
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if isinstance(first, slice):
        start, stop, step = first.indices(n_rows)
        return (start, stop) if step == 1 else (0, n_rows)
    if isinstance(first, (int, np.integer)):
        i = int(first) % n_rows if n_rows else 0
        return i, i + 1
    return 0, n_rows


class CheckedArray:
    """A zarr array whose reads raise :func:`read_rows`'s DataError (naming the chunk) instead of zarr's errors.

    What :attr:`ReplayBuffer.data` returns for on-disk buffers, so that windows read straight from disk
    (``SequenceDataset(..., in_memory=False)``) fail as clearly as whole-episode reads. Every other
    attribute (``shape``, ``dtype``, ``chunks``, ...) is the zarr array's.
    """

    def __init__(self, arr: Any, *, where: str, key: str):
        self._arr = arr
        self._where = where
        self._key = key

    def __getitem__(self, selection: Any) -> Any:
        try:
            return self._arr[selection]
        except Exception as e:  # see read_rows
            lo, hi = row_range(selection, self._arr.shape[0])
            bad = bad_chunks(self._arr, lo, hi)
            if bad:
                raise chunk_error(self._where, self._key, *bad[0]) from bad[0][1]
            raise DataError(f"{self._where}: key {self._key!r}: cannot read stored data "
                            f"({type(e).__name__}: {e})") from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arr, name)

    def __len__(self) -> int:
        return int(self._arr.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return np.asarray(out, dtype=dtype)

    def __repr__(self) -> str:
        return f"CheckedArray({self._arr!r})"
