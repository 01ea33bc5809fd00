"""Episode storage on zarr 3 (or in memory): ``data/<key>`` concatenated over time + ``meta/episode_ends``.

On-disk layout (the Diffusion Policy layout, zarr format 3)::

    buffer.zarr/
      zarr.json                 root attrs: user attrs (env_meta, task, ...) + "lfm_policy_format"
      data/<key>                (n_steps, ...) every key concatenated over episodes
      meta/episode_ends         (n_episodes,) int64, exclusive end step of each episode
      meta/episode_attrs/<i>    optional per-episode JSON attrs (e.g. robosuite model xml, seed)

Images are uint8 (T, H, W, C) chunked by a few frames; every array is compressed with Blosc/zstd.

**Crash safety.** zarr's LocalStore writes every chunk and metadata file to a temporary file and
renames it, so each file write is atomic. :meth:`ReplayBuffer.add_episode` first appends the episode's
rows to every ``data/<key>`` (rewriting a partial chunk keeps the earlier rows' values), then writes
its per-episode attrs, and *commits* last by appending to ``meta/episode_ends``. Readers only look at
rows below the last committed end, so a writer killed at any point leaves the earlier episodes intact.
The one torn state possible is ``episode_ends`` grown by one entry whose value was not written yet: it
reads as 0 (the fill value) and is recognised and ignored on open; ``open(mode="a")`` repairs it and
trims uncommitted rows before appending again. One writer at a time.

**New buffers.** :meth:`ReplayBuffer.create` builds the store in a sibling temporary directory
(``<name>.<hex>.tmp``) and renames it to the final path when the first episode is committed (or on
:meth:`close` for an empty buffer), so the final path never holds a half-created dataset. With
``atomic=True`` the rename waits until :meth:`close`, and leaving a ``with`` block on an exception
deletes the temporary directory: nothing appears at the path unless the whole write succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets.buffer_backends import MemoryBackend, ZarrBackend
from lfm_policy.datasets.episode import cast_to, check_episode, is_image
from lfm_policy.errors import DataError, LfmPolicyError


class _Attrs(dict):
    """The buffer's attrs: a dict whose changes are written through to the store (JSON values only).

    A change that cannot be stored (not JSON-serializable, read-only buffer) raises and is rolled back.
    """

    def __init__(self, owner: ReplayBuffer, initial: Mapping[str, Any]):
        super().__init__(initial)
        self._owner = owner

    def _mutate(self, op: str, *args: Any, **kwargs: Any) -> Any:
        before = dict(self)
        result = getattr(super(), op)(*args, **kwargs)
        try:
            clean = self._owner._save_attrs(dict(self))
        except Exception:
            super().clear()
            super().update(before)
            raise
        super().clear()
        super().update(clean)
        return result

    def __setitem__(self, key: str, value: Any) -> None:
        self._mutate("__setitem__", key, value)

    def __delitem__(self, key: str) -> None:
        self._mutate("__delitem__", key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102 (dict.update)
        self._mutate("update", *args, **kwargs)

    def pop(self, *args: Any) -> Any:  # noqa: D102 (dict.pop)
        return self._mutate("pop", *args)

    def setdefault(self, key: str, default: Any = None) -> Any:  # noqa: D102 (dict.setdefault)
        self._mutate("setdefault", key, default)
        return self[key]

    def clear(self) -> None:  # noqa: D102 (dict.clear)
        self._mutate("clear")


class ReplayBuffer:
    """Episodes of ``{key: (T, ...)}`` arrays stored back to back (see the module docstring).

    Build one with :meth:`create`, :meth:`open` or :meth:`in_memory`; use it as a context manager or
    call :meth:`close` when writing to disk.
    """

    def __init__(self, backend: MemoryBackend | ZarrBackend, *, writable: bool, publish_to: Path | None = None,
                 atomic: bool = False, overwrite: bool = False):
        self._backend = backend
        self._writable = writable
        self._publish_to = publish_to
        self._atomic = atomic
        self._overwrite = overwrite
        self._closed = False
        self.attrs = _Attrs(self, backend.read_attrs())

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | os.PathLike, *, attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
               atomic: bool = False) -> ReplayBuffer:
        """Create a new on-disk buffer (written in a temporary directory until published, see module doc).

        Args:
            path: Final directory, conventionally ending in ``.zarr``.
            attrs: Initial root attrs (JSON-serializable), e.g. ``{"env_meta": ..., "task": "lift"}``.
            overwrite: Replace an existing dataset at ``path`` when publishing.
            atomic: Publish only on :meth:`close` (all-or-nothing) instead of at the first episode.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.

        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = ZarrBackend.create(tmp, display=path)
        buf = cls(backend, writable=True, publish_to=path, atomic=atomic, overwrite=overwrite)
        if attrs:
            buf.attrs.update(attrs)
        return buf

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> ReplayBuffer:
        """Open an existing buffer for reading (``"r"``) or appending (``"a"``).

        Opening with ``"a"`` repairs the trace of an interrupted write (module docstring).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            DataError: ``path`` is not a replay buffer or is inconsistent (names the file and key).

        """
        if mode not in ("r", "a"):
            raise LfmPolicyError(f"ReplayBuffer.open: mode must be 'r' or 'a', got {mode!r}")
        backend = ZarrBackend.open(Path(path), writable=(mode == "a"))
        return cls(backend, writable=(mode == "a"))

    @classmethod
    def in_memory(cls, attrs: Mapping[str, Any] | None = None) -> ReplayBuffer:
        """Create an empty buffer held in numpy arrays (fast random access, nothing on disk)."""
        buf = cls(MemoryBackend(), writable=True)
        if attrs:
            buf.attrs.update(attrs)
        return buf

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None and self._publish_to is not None:
            self.discard()
        else:
            self.close()

    def close(self) -> None:
        """Publish a newly created buffer (if not done yet) and stop accepting writes."""
        if self._closed:
            return
        if self._publish_to is not None:
            self._publish()
        self._closed = True
        self._writable = False

    def discard(self) -> None:
        """Delete a buffer that was never published (a no-op for published or opened buffers)."""
        if self._publish_to is not None:
            shutil.rmtree(self._backend.path, ignore_errors=True)
            self._publish_to = None
        self._closed = True
        self._writable = False

    def _publish(self) -> None:
        final, tmp = self._publish_to, self._backend.path
        old = None
        if final.exists():
            if not self._overwrite:
                self.discard()
                raise FileExistsError(f"{final} appeared while it was being created; nothing was written")
            old = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.old")
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._backend = ZarrBackend.open(final, writable=True)
        self._publish_to = None

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
    def data(self) -> dict[str, Any]:
        """``{key: array}`` over all steps; rows at and beyond :attr:`n_steps` must be ignored.

        numpy arrays for in-memory buffers, ``zarr.Array`` for on-disk ones; both slice like numpy.
        """
        return {k: self._backend.array(k) for k in self._backend.keys()}

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
            DataError: Unknown key, or stored data that cannot be decoded (names file, episode, key).

        """
        sl = self.episode_slice(i)
        out = {}
        for key in self.keys if keys is None else keys:
            arr = self._array(key)
            try:
                out[key] = np.asarray(arr[sl])
            except Exception as e:  # zarr/numcodecs raise various types for corrupt chunks
                raise DataError(f"{self.where}: episode {i}: key {key!r}: cannot read stored data "
                                f"({type(e).__name__}: {e})") from e
        return out

    def get_episode_attrs(self, i: int) -> dict[str, Any]:
        """Per-episode attrs given to :meth:`add_episode` (``{}`` if none)."""
        self.episode_slice(i)  # range check
        return self._backend.read_episode_attrs(i % self.n_episodes)

    # ------------------------------------------------------------------ writing
    def add_episode(self, data: Mapping[str, Any], *, chunks: Mapping[str, tuple[int, ...]] | None = None,
                    episode_attrs: Mapping[str, Any] | None = None) -> int:
        """Append one episode and commit it (crash-safe, see module docstring).

        Args:
            data: ``{key: (T, ...)}`` with the same T ≥ 1 for every key. The first episode fixes the
                keys, per-step shapes and dtypes; later episodes must match (floats may differ in
                precision and are cast).
            chunks: Chunk shape per key, used when a key is created (first episode). Default: images
                4 frames per chunk, low-dim arrays ~1 MiB chunks.
            episode_attrs: JSON-serializable per-episode metadata (e.g. ``{"model_file": xml}``).

        Returns:
            The new episode's index.

        Raises:
            DataError: Missing/extra key, length mismatch, empty episode, NaN/Inf, wrong dtype or
                shape (the message names the buffer, the episode index and the key).

        """
        if not self._writable:
            raise LfmPolicyError(f"{self.where}: buffer is read-only or closed")
        index = self.n_episodes
        where = f"{self.where}: episode {index}"
        episode = check_episode(data, where)
        episode = self._match_schema(episode, where, chunks or {})
        ep_attrs = _check_json(dict(episode_attrs or {}), f"{where}: episode_attrs")
        self._backend.append_episode(episode, ep_attrs, chunks or {})
        if self._publish_to is not None and not self._atomic:
            self._publish()
        return index

    def _match_schema(self, episode: dict[str, np.ndarray], where: str,
                      chunks: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        existing = self._backend.keys()
        if not existing:
            for key, c in chunks.items():
                if key not in episode:
                    raise DataError(f"{where}: chunks given for unknown key {key!r}")
                if len(c) != episode[key].ndim or any(int(x) < 1 for x in c):
                    raise DataError(f"{where}: key {key!r}: chunks {tuple(c)} do not fit shape "
                                    f"{episode[key].shape}")
            return episode
        missing = sorted(set(existing) - set(episode))
        extra = sorted(set(episode) - set(existing))
        if missing:
            raise DataError(f"{where}: missing key {missing[0]!r} (the buffer has keys {existing})")
        if extra:
            raise DataError(f"{where}: unexpected key {extra[0]!r} (the buffer has keys {existing})")
        out = {}
        for key, arr in episode.items():
            shape, dtype = self.key_spec(key)
            if arr.shape[1:] != shape:
                raise DataError(f"{where}: key {key!r} has per-step shape {arr.shape[1:]}, "
                                f"but the buffer stores {shape}")
            if key in chunks and tuple(chunks[key]) != self._backend.chunks(key):
                raise DataError(f"{where}: key {key!r} already exists with chunks {self._backend.chunks(key)}")
            out[key] = cast_to(arr, dtype, where, key)
        return out

    def _save_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not self._writable:
            raise LfmPolicyError(f"{self.where}: buffer is read-only or closed; attrs cannot change")
        clean = _check_json(attrs, f"{self.where}: attrs")
        self._backend.write_attrs(clean)
        return clean

    # ------------------------------------------------------------------ copies
    def copy_to_memory(self, keys: list[str] | None = None) -> ReplayBuffer:
        """Return an in-memory copy (numpy arrays; what training samples from)."""
        backend = MemoryBackend(source=self.where)
        n = self.n_steps
        arrays = {}
        for key in self.keys if keys is None else keys:
            try:
                arrays[key] = np.asarray(self._array(key)[:n])
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"{self.where}: key {key!r}: cannot read stored data "
                                f"({type(e).__name__}: {e})") from e
        backend.load(arrays, self._backend.ends, [self._backend.read_episode_attrs(i)
                                                  for i in range(self.n_episodes)])
        backend.write_attrs(dict(self.attrs))
        return ReplayBuffer(backend, writable=True)

    def copy_to(self, path: str | os.PathLike, *, overwrite: bool = False) -> ReplayBuffer:
        """Write this buffer to a new on-disk buffer at ``path`` (all-or-nothing); return it opened."""
        with ReplayBuffer.create(path, attrs=dict(self.attrs), overwrite=overwrite, atomic=True) as out:
            for i in range(self.n_episodes):
                out.add_episode(self.get_episode(i), episode_attrs=self.get_episode_attrs(i))
        return ReplayBuffer.open(path)

    def __repr__(self) -> str:
        return f"ReplayBuffer({self.where!r}, n_episodes={self.n_episodes}, n_steps={self.n_steps}, keys={self.keys})"


def _check_json(value: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: values must be JSON-serializable ({e})") from e
