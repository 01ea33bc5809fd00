"""Staging directories: locked while a writer lives, removed once it died, resumable."""

import logging

import numpy as np
import pytest
from crash_writer import kill, run_until_killed, small_episode, start_writer

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.errors import LfmPolicyError


def _assert_small_episodes(buf, n):
    assert buf.n_episodes == n
    for i in range(n):
        want = small_episode(i)
        got = buf.get_episode(i)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        assert buf.get_episode_attrs(i) == {"seed": i}


def test_a_live_writers_folder_is_kept_and_cannot_be_resumed(tmp_path, caplog):
    path = tmp_path / "live.zarr"
    proc, _ = start_writer(path, "hold", 2, 0, tmp_path, wait_for="holding")
    try:
        (staging,) = tmp_path.glob("live.zarr.*.tmp")
        assert ReplayBuffer.staging_locked(staging)
        with caplog.at_level(logging.WARNING, logger="lfm_policy.datasets.staging"):
            other = ReplayBuffer.create(path, atomic=True)  # a second writer of the same path
        assert staging.is_dir() and "stale" not in caplog.text
        other.discard()
        with pytest.raises(LfmPolicyError, match="a live process is still writing this staging directory"):
            ReplayBuffer.resume(path, staging)
        assert ReplayBuffer.open(staging).n_episodes == 2  # readable meanwhile
    finally:
        kill(proc)
    assert not ReplayBuffer.staging_locked(staging)  # the kernel dropped the lock with the process
    with ReplayBuffer.create(path, atomic=True) as buf:
        buf.add_episode(small_episode(0), episode_attrs={"seed": 0})
    assert not staging.exists() and sorted(p.name for p in tmp_path.glob("live.zarr*")) == ["live.zarr"]


def test_resume_after_sigkill_continues_and_publishes_on_close(tmp_path):
    path, staging = tmp_path / "out.zarr", tmp_path / "out.zarr.stage"
    run_until_killed(path, "stage", 3, 40_000, tmp_path, staging=staging)
    assert not path.exists() and staging.is_dir() and not ReplayBuffer.staging_locked(staging)
    buf = ReplayBuffer.resume(path, staging)
    assert ReplayBuffer.staging_locked(staging)
    _assert_small_episodes(buf, 3)  # the big episode being written when the writer died is gone
    assert buf.attrs == {"task": "crash"} and buf.path == path
    buf.add_episode(small_episode(3), episode_attrs={"seed": 3})
    assert not path.exists()  # atomic: published on close only
    buf.close()
    assert not staging.exists()
    _assert_small_episodes(ReplayBuffer.open(path), 4)


def test_staging_api_errors_and_discard(tmp_path):
    path, staging = tmp_path / "b.zarr", tmp_path / "custom.stage"
    with pytest.raises(FileNotFoundError):
        ReplayBuffer.resume(path, staging)
    assert not ReplayBuffer.staging_locked(staging)
    buf = ReplayBuffer.create(path, staging=staging, attrs={"v": 1})
    assert staging.is_dir() and ReplayBuffer.staging_locked(staging)
    with pytest.raises(FileExistsError, match="staging directory already exists"):
        ReplayBuffer.create(path, staging=staging)
    buf.add_episode(small_episode(0), episode_attrs={"seed": 0})  # not atomic: published at the first episode
    assert path.is_dir() and not staging.exists() and not ReplayBuffer.staging_locked(path)
    buf.close()

    staging2 = tmp_path / "second.stage"
    buf = ReplayBuffer.create(tmp_path / "c.zarr", staging=staging2, atomic=True)
    buf.add_episode(small_episode(0), episode_attrs={"seed": 0})
    buf.close()  # releases the lock ...
    with pytest.raises(FileExistsError, match="--overwrite"):
        ReplayBuffer.resume(path, tmp_path / "c.zarr")  # ... and the final path exists
    buf = ReplayBuffer.create(tmp_path / "d.zarr", staging=staging2, atomic=True)
    buf.discard()
    assert not staging2.exists() and not (tmp_path / "d.zarr").exists()
    # release(): give up writing but keep the staging directory, unlocked and resumable
    with ReplayBuffer.create(tmp_path / "e.zarr", staging=staging2, atomic=True) as buf:
        buf.add_episode(small_episode(0), episode_attrs={"seed": 0})
        buf.release()
    assert staging2.is_dir() and not ReplayBuffer.staging_locked(staging2) and not (tmp_path / "e.zarr").exists()
    with ReplayBuffer.resume(tmp_path / "e.zarr", staging2) as buf:
        buf.add_episode(small_episode(1), episode_attrs={"seed": 1})
    _assert_small_episodes(ReplayBuffer.open(tmp_path / "e.zarr"), 2)
    # a dead writer's staging directory resumed with overwrite=True replaces an existing output
    proc, _ = start_writer(tmp_path / "x.zarr", "hold", 2, 0, tmp_path, wait_for="holding")
    kill(proc)
    (left,) = tmp_path.glob("x.zarr.*.tmp")
    with ReplayBuffer.resume(path, left, overwrite=True) as buf:
        buf.add_episode(small_episode(2), episode_attrs={"seed": 2})
    _assert_small_episodes(ReplayBuffer.open(path), 3)
    assert not left.exists()


def _race_make_locked(args):
    """Worker: wait for the other process, then try to create each staging directory."""
    import time

    from lfm_policy.datasets import staging as staging_dirs

    root, names, start = args
    while time.time() < start:  # both processes leave this loop at the same instant
        pass
    won, locks = [], []
    for name in names:
        try:
            locks.append(staging_dirs.make_locked(root / name))
            won.append(name)
        except FileExistsError:
            pass
    return won


def test_two_processes_creating_one_staging_directory_never_both_win(tmp_path):
    """A plain rename replaces an empty directory: both creators would think the directory is theirs."""
    import multiprocessing
    import time

    names = [f"s{i}.collect.tmp" for i in range(200)]
    start = time.time() + 0.5
    with multiprocessing.get_context("fork").Pool(2) as pool:
        a, b = pool.map(_race_make_locked, [(tmp_path, names, start)] * 2)
    assert not set(a) & set(b)  # a name is created by one process only
    assert sorted(a + b) == sorted(names)  # and by one of them always
