"""Episode storage on zarr 3 (or in memory): ``data/<key>`` concatenated over time + ``meta/episode_ends``.

On-disk layout (the Diffusion Policy layout, zarr format 3; replay-buffer format version 2)::

    buffer.zarr/
      zarr.json                 root attrs: user attrs (env_meta, task, ...) + "lfm_policy_format"
      data/<key>                (n_steps, ...) every key concatenated over episodes
      meta/episode_ends         (n_episodes,) int64, exclusive end step of each episode
      meta/episode_attrs/<i>    optional per-episode JSON attrs (e.g. robosuite model xml, seed)
      meta/final_obs/<key>      optional (n_episodes, ...) observation after each episode's last action

Images are uint8 (T, H, W, C) chunked by a few frames; every array is compressed with Blosc/zstd.

**Integrity (format 2).** Every chunk of every array ends with a crc32c checksum of its stored bytes
(``zarr.codecs.Crc32cCodec`` after Blosc), checked on each read, and every chunk is stored, even one
that holds only zeros. Opening a store checks that every chunk holding committed rows exists (zarr
would read a missing chunk as zeros); any read that meets a damaged chunk raises a DataError naming
the store, key, chunk and step range (:mod:`lfm_policy.datasets.chunks`). Format-1 stores (no
checksums; all-zero chunks were skipped) still open and read; ``lfm-policy data rewrite`` converts them.

**Crash safety.** zarr's LocalStore writes every chunk and metadata file to a temporary file and
renames it, so each file write is atomic. :meth:`ReplayBuffer.add_episode` first appends the episode's
rows to every ``data/<key>`` (rewriting a partial chunk keeps the earlier rows' values), then its final
observation and per-episode attrs, and *commits* last by appending to ``meta/episode_ends``. Readers
only look at rows below the last committed end, so a writer killed at any point leaves the earlier
episodes intact. The one torn state possible is ``episode_ends`` grown by one entry whose value was
not written yet: it reads as 0 (the fill value) and is recognised and ignored on open;
``open(mode="a")`` repairs it and trims uncommitted rows before appending again. One writer at a time.

**New buffers.** :meth:`ReplayBuffer.create` builds the store in a staging directory (by default the
sibling ``<name>.<8 hex>.tmp``) and renames it to the final path when the first episode is committed
(or on :meth:`close` for an empty buffer), so the final path never holds a half-created dataset. With
``atomic=True`` the rename waits until :meth:`close`, and leaving a ``with`` block on an exception
deletes the staging directory: nothing appears at the path unless the whole write succeeded. While a
writer is open its process holds an exclusive ``flock`` on the staging directory
(:mod:`lfm_policy.datasets.staging`): ``create`` deletes default staging directories whose writer
died, and :meth:`resume` continues one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets import staging as staging_dirs
from lfm_policy.datasets.buffer_attrs import WriteThroughAttrs, check_json
from lfm_policy.datasets.buffer_backends import MemoryBackend
from lfm_policy.datasets.buffer_lifecycle import OnDiskLifecycle
from lfm_policy.datasets.buffer_schema import match_final, match_schema
from lfm_policy.datasets.episode import check_episode, is_image
from lfm_policy.errors import DataError, LfmPolicyError


class ReplayBuffer(OnDiskLifecycle):
    """Episodes of ``{key: (T, ...)}`` arrays stored back to back (see the module docstring).

    Build one with :meth:`create`, :meth:`resume`, :meth:`open` or :meth:`in_memory`; use it as a
    context manager or call :meth:`close` when writing to disk (creation, publishing and the staging
    lock: :class:`~lfm_policy.datasets.buffer_lifecycle.OnDiskLifecycle`).
    """

    def __init__(self, backend: Any, *, writable: bool, publish_to: Path | None = None, atomic: bool = False,
                 overwrite: bool = False, lock: staging_dirs.DirLock | None = None, own_staging: bool = True):
        self._backend = backend
        self._writable = writable
        self._publish_to = publish_to
        self._atomic = atomic
        self._overwrite = overwrite
        self._lock = lock
        self._own_staging = own_staging  # a default staging directory (deleted if publishing fails)
        self._closed = False
        self.attrs = WriteThroughAttrs(self._save_attrs, backend.read_attrs())

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", *, missing_as_zero: bool = False) -> ReplayBuffer:
        """Open an existing buffer for reading (``"r"``) or appending (``"a"``).

        Opening checks the structure and that every chunk holding committed rows exists; ``"a"`` also
        repairs the trace of an interrupted write (module docstring).

        Args:
            path: The buffer's directory.
            mode: ``"r"`` or ``"a"``.
            missing_as_zero: Format-1 stores only: read missing chunks as zeros instead of raising
                (stores written before format 2 skipped all-zero chunks).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            DataError: ``path`` is not a replay buffer, is inconsistent or has missing chunks (names
                the file, key, chunk and step range).

        """
        from lfm_policy.datasets.zarr_backend import ZarrBackend

        if mode not in ("r", "a"):
            raise LfmPolicyError(f"ReplayBuffer.open: mode must be 'r' or 'a', got {mode!r}")
        backend = ZarrBackend.open(Path(path), writable=(mode == "a"), missing_as_zero=missing_as_zero)
        return cls(backend, writable=(mode == "a"))

    @classmethod
    def in_memory(cls, attrs: Mapping[str, Any] | None = None) -> ReplayBuffer:
        """Create an empty buffer held in numpy arrays (fast random access, nothing on disk)."""
        buf = cls(MemoryBackend(), writable=True)
        if attrs:
            buf.attrs.update(attrs)
        return buf

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path | None:
        """Final on-disk path (``None`` for an in-memory buffer)."""
        return self._publish_to or getattr(self._backend, "display", None)

    @property
    def where(self) -> str:
        """How error messages name this buffer: its path, the path it was copied from, or ``<memory>``."""
        if self.path is not None:
            return str(self.path)
        return getattr(self._backend, "source", None) or "<memory>"

    @property
    def format_version(self) -> int | None:
        """On-disk format version (2 = checksummed, every chunk stored; 1 = older); ``None`` in memory."""
        return self._backend.format_version

    @property
    def checksummed(self) -> bool:
        """True when every stored chunk carries a checksum that reads verify (format 2)."""
        return bool(self._backend.checksummed)

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes."""
        return len(self._backend.ends)

    @property
    def n_steps(self) -> int:
        """Total committed steps (sum of the episode lengths)."""
        ends = self._backend.ends
        return int(ends[-1]) if len(ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(n_episodes,) int64 exclusive end step of each episode (a copy)."""
        return np.array(self._backend.ends, dtype=np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        """(n_episodes,) int64 length of each episode."""
        return np.diff(self.episode_ends, prepend=0)

    @property
    def keys(self) -> list[str]:
        """Sorted data keys."""
        return self._backend.keys()

    @property
    def final_obs_keys(self) -> list[str]:
        """Sorted keys that have a per-episode final observation (``[]`` when none)."""
        return self._backend.final_obs_keys()

    @property
    def data(self) -> dict[str, Any]:
        """``{key: array}`` over all steps; rows at and beyond :attr:`n_steps` must be ignored.

        numpy arrays for in-memory buffers; for on-disk ones, zarr arrays wrapped so that a damaged
        chunk raises a DataError naming it (:class:`~lfm_policy.datasets.chunks.CheckedArray`); both
        slice like numpy.
        """
        if isinstance(self._backend, MemoryBackend):
            return {k: self._backend.array(k) for k in self._backend.keys()}
        from lfm_policy.datasets.chunks import CheckedArray

        return {k: CheckedArray(self._backend.array(k), where=self.where, key=k) for k in self._backend.keys()}

    def chunks(self, key: str) -> tuple[int, ...] | None:
        """Chunk shape of ``data/<key>`` (``None`` for an in-memory buffer)."""
        self._array(key)
        return self._backend.chunks(key)

    def key_spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Return ``(per_step_shape, dtype)`` of ``key``; raises DataError naming unknown keys."""
        arr = self._array(key)
        return tuple(arr.shape[1:]), np.dtype(arr.dtype)

    @property
    def image_keys(self) -> list[str]:
        """Keys holding uint8 (T, H, W, C) camera frames."""
        return [k for k in self.keys if is_image((0, *self.key_spec(k)[0]), self.key_spec(k)[1])]

    def episode_slice(self, i: int) -> slice:
        """Step range of episode ``i`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"{self.where}: episode {i} out of range (have {n})")
        i %= n
        ends = self._backend.ends
        return slice(int(ends[i - 1]) if i > 0 else 0, int(ends[i]))

    def _array(self, key: str) -> Any:
        if key not in self._backend.keys():
            raise DataError(f"{self.where}: unknown key {key!r}; available keys: {self.keys}")
        return self._backend.array(key)

    # ------------------------------------------------------------------ reading
    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Return episode ``i`` as ``{key: (T, ...)}`` numpy arrays (all keys unless ``keys`` is given).

        Raises:
            IndexError: ``i`` is out of range.
            DataError: Unknown key, or a stored chunk that is corrupt (names file, episode, key, chunk).

        """
        sl = self.episode_slice(i)
        where = f"{self.where}: episode {i}"
        out = {}
        for key in self.keys if keys is None else keys:
            self._array(key)  # unknown keys
            out[key] = np.asarray(self._backend.read(key, sl.start, sl.stop, where))
        return out

    def get_final_obs(self, i: int) -> dict[str, np.ndarray] | None:
        """The observation after episode ``i``'s last action, ``{key: per-step array}``; ``None`` if not stored."""
        self.episode_slice(i)  # range check
        if not self.final_obs_keys:
            return None
        return self._backend.read_final_obs(i % self.n_episodes, f"{self.where}: episode {i}")

    def get_episode_attrs(self, i: int) -> dict[str, Any]:
        """Per-episode attrs given to :meth:`add_episode` (``{}`` if none)."""
        self.episode_slice(i)  # range check
        return self._backend.read_episode_attrs(i % self.n_episodes)

    # ------------------------------------------------------------------ writing
    def add_episode(self, data: Mapping[str, Any], *, final_obs: Mapping[str, Any] | None = None,
                    chunks: Mapping[str, tuple[int, ...]] | None = None,
                    episode_attrs: Mapping[str, Any] | None = None) -> int:
        """Append one episode and commit it (crash-safe, see module docstring).

        Args:
            data: ``{key: (T, ...)}`` with the same T ≥ 1 for every key. The first episode fixes the
                keys, per-step shapes and dtypes; later episodes must match (floats may differ in
                precision and are cast).
            final_obs: The observation after the last action, ``{key: per-step array}`` for a subset of
                the data keys (cast like ``data``). The first episode fixes which keys have one; later
                episodes must give the same keys. Stored as ``meta/final_obs/<key>`` (format 2).
            chunks: Chunk shape per key, used when a key is created (first episode). Default: images
                4 frames per chunk, low-dim arrays ~1 MiB chunks.
            episode_attrs: JSON-serializable per-episode metadata (e.g. ``{"model_file": xml}``).

        Returns:
            The new episode's index.

        Raises:
            DataError: Missing/extra key, length mismatch, empty episode, NaN/Inf, wrong dtype or
                shape, final-observation keys that differ from the first episode's (the message names
                the buffer, the episode index and the key).

        """
        if not self._writable:
            raise LfmPolicyError(f"{self.where}: buffer is read-only or closed")
        index = self.n_episodes
        where = f"{self.where}: episode {index}"
        episode = check_episode(data, where)
        episode = match_schema(self, episode, where, chunks or {})
        final = match_final(self, final_obs, episode, where)
        ep_attrs = check_json(dict(episode_attrs or {}), f"{where}: episode_attrs")
        self._backend.append_episode(episode, final, ep_attrs, chunks or {})
        if self._publish_to is not None and not self._atomic:
            self._publish(writable=True)
        return index

    def _save_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not self._writable:
            raise LfmPolicyError(f"{self.where}: buffer is read-only or closed; attrs cannot change")
        clean = check_json(attrs, f"{self.where}: attrs")
        self._backend.write_attrs(clean)
        return clean

    # ------------------------------------------------------------------ copies
    def copy_to_memory(self, keys: list[str] | None = None) -> ReplayBuffer:
        """Return an in-memory copy (numpy arrays; what training samples from), final observations included."""
        backend = MemoryBackend(source=self.where)
        n = self.n_steps
        keys = self.keys if keys is None else list(keys)
        arrays = {}
        for key in keys:
            self._array(key)  # unknown keys
            arrays[key] = np.asarray(self._backend.read(key, 0, n, self.where))
        final = {}
        if self.final_obs_keys and self.n_episodes:
            per_episode = [self.get_final_obs(i) for i in range(self.n_episodes)]
            final = {k: np.stack([f[k] for f in per_episode]) for k in self.final_obs_keys if k in keys}
        backend.load(arrays, self._backend.ends, [self._backend.read_episode_attrs(i)
                                                  for i in range(self.n_episodes)], final)
        backend.write_attrs(dict(self.attrs))
        return ReplayBuffer(backend, writable=True)

    def copy_to(self, path: str | os.PathLike, *, overwrite: bool = False,
                on_episode: Callable[[int, int], None] | None = None) -> ReplayBuffer:
        """Write this buffer to a new format-2 buffer at ``path`` (all-or-nothing); return it opened.

        Keeps attrs, per-episode attrs, final observations and chunk shapes. ``path`` may be this
        buffer's own path with ``overwrite=True`` (the copy replaces it once complete).
        ``on_episode(done, total)`` is called after each episode.
        """
        chunks = {k: c for k in self.keys if (c := self.chunks(k))}
        with ReplayBuffer.create(path, attrs=dict(self.attrs), overwrite=overwrite, atomic=True) as out:
            for i in range(self.n_episodes):
                out.add_episode(self.get_episode(i), final_obs=self.get_final_obs(i), chunks=chunks if i == 0 else None,
                                episode_attrs=self.get_episode_attrs(i))
                if on_episode is not None:
                    on_episode(i + 1, self.n_episodes)
        return ReplayBuffer.open(path)

    def __repr__(self) -> str:
        return f"ReplayBuffer({self.where!r}, n_episodes={self.n_episodes}, n_steps={self.n_steps}, keys={self.keys})"
