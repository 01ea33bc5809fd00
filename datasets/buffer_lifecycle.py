"""Creating, resuming and publishing on-disk replay buffers (the staging-directory life cycle).

:class:`OnDiskLifecycle` is the part of :class:`~lfm_policy.datasets.replay_buffer.ReplayBuffer` that
builds a new buffer in a locked staging directory (:mod:`lfm_policy.datasets.staging`), renames it to
its final path when published, and releases or deletes it. See ``replay_buffer``'s module docstring.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from lfm_policy.datasets import staging as staging_dirs
from lfm_policy.errors import LfmPolicyError


def exists_message(path: Path) -> str:
    """The message for an output that exists: names the CLI flag and the Python argument."""
    return f"{path} already exists (replace it with --overwrite, or overwrite=True in Python)"


_B = TypeVar("_B", bound="OnDiskLifecycle")


class OnDiskLifecycle:
    """Construction and publishing of on-disk buffers; mixed into ``ReplayBuffer`` (uses its attributes)."""

    _backend: Any
    _publish_to: Path | None
    _lock: staging_dirs.DirLock | None
    _own_staging: bool
    _overwrite: bool
    _closed: bool
    _writable: bool

    @classmethod
    def create(cls: type[_B], path: str | os.PathLike, *, attrs: Mapping[str, Any] | None = None,
               overwrite: bool = False, atomic: bool = False, staging: str | os.PathLike | None = None) -> _B:
        """Create a new on-disk buffer (written in a staging directory until published, see module doc).

        Args:
            path: Final directory, conventionally ending in ``.zarr``.
            attrs: Initial root attrs (JSON-serializable), e.g. ``{"env_meta": ..., "task": "lift"}``.
            overwrite: Replace an existing dataset at ``path`` when publishing.
            atomic: Publish only on :meth:`close` (all-or-nothing) instead of at the first episode.
            staging: Directory to build in (must not exist). Default: ``<name>.<8 hex>.tmp`` beside
                ``path``, after removing the default staging directories of ``path`` whose writer died.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False, or ``staging`` exists.

        """
        from lfm_policy.datasets.zarr_backend import ZarrBackend

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(exists_message(path))
        own = staging is None
        if own:
            staging_dirs.remove_stale(path)
            staging = staging_dirs.default_staging(path)
        staging = Path(staging)
        lock = staging_dirs.make_locked(staging)
        try:
            backend = ZarrBackend.create(staging, display=path)
            buf = cls(backend, writable=True, publish_to=path, atomic=atomic, overwrite=overwrite, lock=lock,
                      own_staging=own)
            if attrs:
                buf.attrs.update(attrs)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            lock.release()
            raise
        return buf

    @classmethod
    def resume(cls: type[_B], path: str | os.PathLike, staging: str | os.PathLike, *, overwrite: bool = False) -> _B:
        """Continue appending to the staging buffer ``staging``, to be published to ``path`` on :meth:`close`.

        The interrupted write is repaired as by ``open(..., "a")``; publishing is atomic (``atomic=True``
        semantics: on :meth:`close`, and leaving a ``with`` block on an exception discards) and
        :meth:`discard` deletes the staging directory. A process that dies keeps it resumable.

        Raises:
            FileNotFoundError: ``staging`` does not exist.
            FileExistsError: ``path`` exists and ``overwrite`` is False.
            LfmPolicyError: Another live process holds the staging directory's lock.
            DataError: ``staging`` is not a readable replay buffer.

        """
        from lfm_policy.datasets.zarr_backend import ZarrBackend

        path, staging = Path(path), Path(staging)
        if not staging.is_dir():
            raise FileNotFoundError(f"{staging}: no such staging directory")
        if path.exists() and not overwrite:
            raise FileExistsError(exists_message(path))
        lock = staging_dirs.DirLock.try_acquire(staging)
        if lock is None:
            raise LfmPolicyError(f"{staging}: a live process is still writing this staging directory (it holds its "
                                 "lock); stop that writer first")
        try:
            backend = ZarrBackend.open(staging, writable=True)
            backend.display = path
            return cls(backend, writable=True, publish_to=path, atomic=True, overwrite=overwrite, lock=lock,
                       own_staging=False)
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def staging_locked(staging: str | os.PathLike) -> bool:
        """True when a live process (this one included) holds the lock of staging directory ``staging``."""
        return staging_dirs.is_locked(Path(staging))

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None and self._publish_to is not None:
            self.discard()
        else:
            self.close()

    def close(self) -> None:
        """Publish a newly created buffer (if not done yet), release its lock and stop accepting writes."""
        if self._closed:
            return
        try:
            if self._publish_to is not None:
                self._publish(writable=False)
        finally:
            self._unlock()
            self._closed = True
            self._writable = False

    def discard(self) -> None:
        """Delete a buffer that was never published (a no-op for published or opened buffers)."""
        if self._publish_to is not None:
            shutil.rmtree(self._backend.path, ignore_errors=True)
            self._publish_to = None
        self._unlock()
        self._closed = True
        self._writable = False

    def release(self) -> None:
        """Stop writing and release the staging lock, neither publishing nor deleting the staging directory.

        What a writer that gives up on an error should do when the committed episodes are worth keeping:
        the directory stays as it is, resumable with :meth:`resume` (as if the process had died).
        """
        self._unlock()
        self._closed = True
        self._writable = False

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _publish(self, *, writable: bool) -> None:
        from lfm_policy.datasets.zarr_backend import ZarrBackend

        final, tmp = self._publish_to, self._backend.path
        old = None
        if final.exists():
            if not self._overwrite:
                if self._own_staging:
                    self.discard()
                    raise FileExistsError(f"{final} appeared while it was being created; nothing was written")
                raise FileExistsError(f"{final} appeared while it was being created; the episodes stay in {tmp} "
                                      "(ReplayBuffer.resume(..., overwrite=True) can publish them)")
            old = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.old")
            os.rename(final, old)
        os.rename(tmp, final)
        self._unlock()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._backend = ZarrBackend.open(final, writable=writable)
        self._publish_to = None
