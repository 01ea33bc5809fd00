"""Per-episode final observations (the observation after the last action)."""

import numpy as np
import pytest
import zarr

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.errors import DataError


def _final(ep, shift=1.0):
    return {"state": ep["state"][-1].astype(np.float64) + shift, "camera": 255 - ep["camera"][-1]}


def _check(buf, eps):
    assert buf.final_obs_keys == ["camera", "state"]
    for i, ep in enumerate(eps):
        got = buf.get_final_obs(i)
        assert sorted(got) == ["camera", "state"]
        assert got["state"].dtype == np.float32 and got["camera"].dtype == np.uint8  # cast like the data
        np.testing.assert_array_equal(got["state"], (ep["state"][-1].astype(np.float64) + 1).astype(np.float32))
        np.testing.assert_array_equal(got["camera"], 255 - ep["camera"][-1])


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_final_obs_are_stored_and_copied(tmp_path, episode_factory, where):
    rng = np.random.default_rng(0)
    eps = [episode_factory(rng, n) for n in (3, 7, 5)]
    path = tmp_path / "f.zarr"
    buf = ReplayBuffer.create(path, atomic=True) if where == "disk" else ReplayBuffer.in_memory()
    for ep in eps:
        buf.add_episode(ep, final_obs=_final(ep))
    _check(buf, eps)
    if where == "disk":
        buf.close()
        buf = ReplayBuffer.open(path)
        assert zarr.open_group(str(path), mode="r")["meta/final_obs/camera"].shape == (3, 8, 8, 3)
        assert zarr.open_group(str(path), mode="r")["meta/final_obs/state"].shape == (3, 4)
    _check(buf, eps)
    _check(buf.copy_to_memory(), eps)
    _check(buf.copy_to(tmp_path / "copy.zarr"), eps)
    assert buf.copy_to_memory(["action", "state"]).final_obs_keys == ["state"]
    with pytest.raises(IndexError):
        buf.get_final_obs(3)
    plain = ReplayBuffer.in_memory()
    plain.add_episode(eps[0])
    assert plain.get_final_obs(0) is None and plain.final_obs_keys == []


@pytest.mark.parametrize("final, match", [
    ({"state": np.zeros(4)}, r"final_obs keys \['state'\] differ from the buffer's \['camera', 'state'\]"),
    (None, r"final_obs keys \[\] differ"),
    ({"wrist": np.zeros(4), "state": np.zeros(4)}, "final_obs key 'wrist' is not a data key"),
    ({"state": np.zeros(5), "camera": np.zeros((8, 8, 3), np.uint8)}, r"final_obs key 'state' has shape \(5,\)"),
    ({"state": np.full(4, np.nan), "camera": np.zeros((8, 8, 3), np.uint8)}, "final_obs key 'state' contains NaN"),
    ({"state": np.zeros(4), "camera": np.zeros((8, 8, 3))}, "key 'final_obs/camera' has dtype float64"),
    ([1, 2], "final_obs must be a dict"),
])
def test_bad_final_obs_are_rejected_without_changes(tmp_path, episode_factory, final, match):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.zarr"
    first = episode_factory(rng, 4)
    with ReplayBuffer.create(path) as buf:
        buf.add_episode(first, final_obs=_final(first))
        with pytest.raises(DataError, match=match) as info:
            buf.add_episode(episode_factory(rng, 4), final_obs=final)
        assert "episode 1" in str(info.value)
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 1
    _check(b, [first])


def test_first_episode_without_final_obs_fixes_none(episode_factory):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.in_memory()
    buf.add_episode(episode_factory(rng, 3))
    ep = episode_factory(rng, 3)
    with pytest.raises(DataError, match=r"final_obs keys \['camera', 'state'\] differ from the buffer's \[\]"):
        buf.add_episode(ep, final_obs=_final(ep))


def test_uncommitted_final_obs_are_trimmed_by_repair(tmp_path, episode_factory):
    """A writer killed after writing an episode's final observation but before its commit."""
    rng = np.random.default_rng(0)
    eps = [episode_factory(rng, n) for n in (4, 5, 6)]
    path = tmp_path / "t.zarr"
    with ReplayBuffer.create(path) as buf:
        for ep in eps[:2]:
            buf.add_episode(ep, final_obs=_final(ep))
    g = zarr.open_group(str(path), mode="r+")
    for _key, arr in g["data"].arrays():
        arr.resize((arr.shape[0] + 6, *arr.shape[1:]))
        arr[-6:] = 1
    for _key, arr in g["meta/final_obs"].arrays():
        arr.resize((3, *arr.shape[1:]))
        arr[2] = 7  # the uncommitted episode's final observation
    assert ReplayBuffer.open(path).n_episodes == 2
    with ReplayBuffer.open(path, "a") as buf:
        assert zarr.open_group(str(path), mode="r")["meta/final_obs/state"].shape[0] == 2
        buf.add_episode(eps[2], final_obs=_final(eps[2]))
    _check(ReplayBuffer.open(path), eps)
    # a final_obs array shorter than the committed episodes is corruption
    g["meta/final_obs/state"].resize((2, 4))
    with pytest.raises(DataError, match="key 'meta/final_obs/state' has 2 entries but meta/episode_ends commits 3"):
        ReplayBuffer.open(path)
