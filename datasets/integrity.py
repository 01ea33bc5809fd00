"""``lfm-policy data check`` and ``data rewrite``: verify every chunk of a replay buffer; re-write one as format 2.

:func:`check_store` reads every chunk holding committed data of every array (``data/<key>``,
``meta/episode_ends``, ``meta/final_obs/<key>``) and reports *all* problems instead of stopping at the
first: missing chunks, chunks whose checksum does not match or that cannot be decoded, and an
inconsistent ``meta/episode_ends``. Format-1 stores carry no checksums, so their contents cannot be
verified (only decoded); the report says so. :func:`rewrite_store` copies any store into a new
format-2 store, all-or-nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets.chunks import ChunkRef, bad_chunks, chunk_problem, chunk_refs, missing_chunks
from lfm_policy.errors import DataError

#: Rows read at once while checking (then chunk by chunk where a read fails), in uncompressed bytes.
_BLOCK_BYTES = 64 << 20


@dataclass
class CheckReport:
    """Result of :func:`check_store`: ``problems`` is empty when every chunk was found and read."""

    path: str
    format_version: int
    checksummed: bool
    n_episodes: int = 0
    n_steps: int = 0
    chunks_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"path": self.path, "ok": self.ok, "format_version": self.format_version,
                "checksummed": self.checksummed, "n_episodes": self.n_episodes, "n_steps": self.n_steps,
                "chunks_checked": self.chunks_checked, "problems": list(self.problems), "notes": list(self.notes)}


def _read_all(arr: Any, n_rows: int, key: str, report: CheckReport) -> None:
    """Read every chunk holding rows ``[0, n_rows)``; add one problem per chunk that fails."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
    c0 = arr.chunks[0]
    step = max(c0, (_BLOCK_BYTES // row_bytes) // c0 * c0)
    for lo in range(0, min(n_rows, arr.shape[0]), step):
        hi = min(lo + step, n_rows, arr.shape[0])
        report.chunks_checked += sum(1 for _ in chunk_refs(arr, lo, hi))
        try:
            arr[lo:hi]
        except Exception:  # zarr/numcodecs raise various types for damaged chunks
            for ref, e in bad_chunks(arr, lo, hi):
                report.problems.append(chunk_problem(key, ref, e))


def _missing(key: str, refs: list[ChunkRef]) -> list[str]:
    return [f"key {key!r}: {ref.describe()} is missing" for ref in refs]


def check_store(path: str | os.PathLike) -> CheckReport:
    """Check every chunk of replay buffer ``path`` (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: ``path`` is not a zarr replay buffer at all (no ``data``/``meta/episode_ends``).

    """
    import zarr
    from zarr.codecs import Crc32cCodec

    from lfm_policy.datasets.buffer_backends import FORMAT, FORMAT_KEY
    from lfm_policy.datasets.zarr_backend import _committed_prefix, rewrite_hint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such replay buffer")
    if not path.is_dir():
        raise DataError(f"{path}: data check reads zarr replay buffers (directories); this is a file")
    try:
        group = zarr.open_group(str(path), mode="r")
        data, ends_arr = group["data"], group["meta/episode_ends"]
    except KeyError as e:
        raise DataError(f"{path}: not a replay buffer (missing {e.args[0]!r})") from e
    except Exception as e:
        raise DataError(f"{path}: not a readable zarr replay buffer ({type(e).__name__}: {e})") from e
    fmt = group.attrs.get(FORMAT_KEY, {"version": 1})
    version = int(fmt.get("version", 1)) if isinstance(fmt, dict) else 0
    if version > FORMAT["version"] or version < 1:
        raise DataError(f"{path}: unsupported replay buffer format {fmt!r}")
    arrays = {k: a for k, a in data.arrays()}
    finals = dict(group["meta/final_obs"].arrays()) if "final_obs" in group["meta"] else {}
    everything = [ends_arr, *arrays.values(), *finals.values()]
    report = CheckReport(str(path), version,
                         all(any(isinstance(c, Crc32cCodec) for c in a.compressors) for a in everything))

    n_ends = ends_arr.shape[0]
    ends_missing = missing_chunks(ends_arr, path / "meta/episode_ends", n_ends - 1)
    report.problems += _missing("meta/episode_ends", ends_missing)
    before = len(report.problems)
    _read_all(ends_arr, n_ends, "meta/episode_ends", report)
    n_valid = n_steps = None
    if len(report.problems) == before and not ends_missing:
        try:
            ends = np.asarray(ends_arr[:], dtype=np.int64)
            n_valid = _committed_prefix(ends, {k: a.shape[0] for k, a in arrays.items()}, path)
            n_steps = int(ends[n_valid - 1]) if n_valid else 0
        except DataError as e:
            report.problems.append(str(e).removeprefix(f"{path}: "))
    if n_valid is None:
        report.notes.append("meta/episode_ends is unusable, so every stored row was checked")
    else:
        report.n_episodes, report.n_steps = n_valid, n_steps
    for key, arr in sorted(arrays.items()):
        n = arr.shape[0] if n_steps is None else n_steps
        report.problems += _missing(key, missing_chunks(arr, path / "data" / key, n))
        _read_all(arr, n, key, report)
    for key, arr in sorted(finals.items()):
        n = arr.shape[0] if n_valid is None else n_valid
        if arr.shape[0] < n:
            report.problems.append(f"key 'meta/final_obs/{key}' has {arr.shape[0]} entries for {n} episodes")
        report.problems += _missing(f"meta/final_obs/{key}", missing_chunks(arr, path / "meta/final_obs" / key, n))
        _read_all(arr, n, f"meta/final_obs/{key}", report)
    if not report.checksummed:
        report.notes.append(f"format {version}: no checksums: contents cannot be verified, only decoded; re-write it "
                            f"as format 2 with `{rewrite_hint(path, missing_as_zero=False)}`")
    if version < 2 and any("is missing" in p for p in report.problems):
        report.notes.append("stores written before format 2 skipped chunks that held only zeros: if zeros are "
                            f"right, `{rewrite_hint(path)}` re-writes it reading them as zeros")
    return report


def rewrite_store(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                  missing_as_zero: bool = False, on_episode: Callable[[int, int], None] | None = None) -> Any:
    """Re-write replay buffer ``src`` as a format-2 store at ``dst`` (all-or-nothing); return it opened.

    Data, attrs, per-episode attrs, final observations and chunk shapes are kept. ``dst`` may equal
    ``src`` with ``overwrite`` (the new store replaces the old one once complete).

    Args:
        src: Any replay buffer (format 1 or 2).
        dst: Output directory.
        overwrite: Replace an existing ``dst``.
        missing_as_zero: Format-1 stores: read missing chunks (all-zero chunks that format 1 skipped)
            as zeros. A format-2 store with a missing chunk is damaged and is refused either way.
        on_episode: Progress callback ``on_episode(done, total)``.

    Raises:
        DataError: ``src`` is damaged (missing chunks without ``missing_as_zero``, corrupt chunks).
        FileExistsError: ``dst`` exists and ``overwrite`` is False.

    """
    from lfm_policy.datasets.buffer_lifecycle import exists_message
    from lfm_policy.datasets.replay_buffer import ReplayBuffer

    if Path(dst).exists() and not overwrite:
        raise FileExistsError(exists_message(Path(dst)))
    source = ReplayBuffer.open(src, missing_as_zero=missing_as_zero)
    return source.copy_to(dst, overwrite=overwrite, on_episode=on_episode)
