"""Staging directories of new replay buffers: an exclusive ``flock`` while a writer lives, stale ones removed.

A buffer created with :meth:`ReplayBuffer.create` is built in a *staging* directory (by default the
sibling ``<name>.<8 hex>.tmp``) and renamed to its final path when published. While a writer has it
open, the process holds an exclusive :func:`fcntl.flock` on the directory (a read-only descriptor of
the directory itself). The kernel drops the lock when the process dies, however it dies (SIGKILL
included), so *a staging directory whose lock can be taken has no live writer*: the next ``create``
of the same path deletes it (:func:`remove_stale`), and :meth:`ReplayBuffer.resume` may take it over.

Locks are per open file description, so a child created with ``fork`` would share the lock and keep
it alive after its parent's death; the descriptors are therefore closed in forked children
(:func:`os.register_at_fork`), which leaves the parent's lock untouched.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
import weakref
from pathlib import Path

from lfm_policy.errors import LfmPolicyError

log = logging.getLogger(__name__)

_HELD: weakref.WeakSet[DirLock] = weakref.WeakSet()


def default_staging(path: Path) -> Path:
    """``<parent>/<name>.<8 hex>.tmp`` next to the final ``path``."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def staging_pattern(path: Path) -> re.Pattern[str]:
    """Names of the default staging directories of ``path``."""
    return re.compile(rf"^{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp$")


class DirLock:
    """An exclusive ``flock`` held on a directory (released by :meth:`release` or the process's death)."""

    def __init__(self, fd: int, path: Path):
        self._fd: int | None = fd
        self.path = path
        _HELD.add(self)

    @classmethod
    def try_acquire(cls, path: Path) -> DirLock | None:
        """Lock directory ``path``; ``None`` if another open descriptor holds its lock.

        Raises:
            FileNotFoundError: ``path`` does not exist.

        """
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return cls(fd, path)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _forget_in_child(self) -> None:
        if self._fd is not None:  # close our copy only: LOCK_UN here would unlock the parent too
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.release()
        except OSError:
            pass


def _after_fork_in_child() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def make_locked(staging: Path) -> DirLock:
    """Create the empty directory ``staging`` already locked (no other process can see it unlocked).

    The directory is made under a private name, locked, then renamed into place, so a concurrent
    :func:`remove_stale` never mistakes a directory being created for a dead writer's.

    Raises:
        FileExistsError: ``staging`` exists.

    """
    if staging.exists():
        raise FileExistsError(f"{staging}: staging directory already exists (a new buffer needs a fresh one; "
                              "use ReplayBuffer.resume to continue it)")
    staging.parent.mkdir(parents=True, exist_ok=True)
    init = staging.with_name(f".{staging.name}.{uuid.uuid4().hex[:8]}.init")
    os.mkdir(init)
    lock = DirLock.try_acquire(init)
    if lock is None:  # nobody else knows this name
        raise LfmPolicyError(f"{init}: could not lock a new staging directory")
    try:
        _rename_noreplace(init, staging)
    except BaseException:
        lock.release()
        shutil.rmtree(init, ignore_errors=True)
        raise
    lock.path = staging
    return lock


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename directory ``src`` to ``dst``, failing if ``dst`` exists (two creators never share one).

    A plain :func:`os.rename` silently replaces an *empty* directory, so two processes creating the
    same staging path at once could both "win" and write into one directory. Linux's ``renameat2``
    with ``RENAME_NOREPLACE`` makes the check and the rename one step; where it is missing (other
    systems, old kernels or file systems) this falls back to a check, then :func:`os.rename`.

    Raises:
        FileExistsError: ``dst`` exists.

    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, f"{dst}: staging directory already exists", str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if dst.exists():
        raise FileExistsError(errno.EEXIST, f"{dst}: staging directory already exists", str(dst))
    os.rename(src, dst)


def is_locked(staging: Path) -> bool:
    """True when a live process (this one included) holds the lock of directory ``staging``."""
    try:
        lock = DirLock.try_acquire(staging)
    except FileNotFoundError:
        return False
    if lock is None:
        return True
    lock.release()
    return False


def remove_stale(path: Path) -> list[Path]:
    """Delete the default staging directories of ``path`` whose writer died (their lock can be taken).

    Directories locked by a live writer are left alone. Logs a warning per directory removed.

    Returns:
        The directories removed.

    """
    pattern = staging_pattern(path)
    removed = []
    try:
        siblings = sorted(p for p in path.parent.iterdir() if pattern.match(p.name))
    except FileNotFoundError:
        return []
    for candidate in siblings:
        if candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            lock = DirLock.try_acquire(candidate)
        except FileNotFoundError:  # removed meanwhile
            continue
        if lock is None:
            continue
        try:
            shutil.rmtree(candidate)
        finally:
            lock.release()
        log.warning("%s: removed a stale staging directory left by a writer that died: %s", path, candidate)
        removed.append(candidate)
    return removed
