import numpy as np
import pytest

from lfm_policy.config import ConfigError
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.sampler import SequenceSampler, split_episodes, window_index
from lfm_policy.errors import DataError


def _indexed_buffer(lengths):
    """Episode e, step t has action [e, t] and obs 'state' [1000 e + t]: values identify their origin."""
    buf = ReplayBuffer.in_memory()
    for e, n in enumerate(lengths):
        t = np.arange(n)
        buf.add_episode({
            "action": np.stack([np.full(n, e), t], 1).astype(np.float32),
            "state": (1000 * e + t)[:, None].astype(np.float64),
        })
    return buf


def test_split_episodes_is_reproducible_and_disjoint():
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(20))
    assert list(train) == sorted(train)
    again = split_episodes(20, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert any(not np.array_equal(split_episodes(20, 0.2, seed=s)[1], val) for s in range(4, 10))
    t2, v2 = split_episodes(20, 0.2, seed=3, max_train_episodes=5)
    assert len(t2) == 5 and set(t2) <= set(train) and np.array_equal(v2, val)
    assert len(split_episodes(20, 0.0, 0)[1]) == 0
    assert len(split_episodes(10, 0.01, 0)[1]) == 1  # at least one validation episode
    t1, v1 = split_episodes(1, 0.5, 0)
    assert list(t1) == [0] and len(v1) == 0  # never leaves training empty
    with pytest.raises(ConfigError, match="val_ratio"):
        split_episodes(5, 1.0, 0)
    with pytest.raises(ConfigError, match="max_train_episodes"):
        split_episodes(5, 0.1, 0, max_train_episodes=0)


@pytest.mark.parametrize("to, h, ta", [(1, 1, 1), (2, 16, 8), (2, 8, 7), (3, 10, 4)])
def test_windows_match_a_direct_reference(to, h, ta):
    lengths = [12, 20, 9]
    buf = _indexed_buffer(lengths)
    sampler = SequenceSampler(buf.data, buf.episode_ends, obs_keys=["state"], action_key="action",
                              n_obs_steps=to, horizon=h, n_action_steps=ta)
    # Diffusion Policy's window starts: pad_before = To-1, pad_after = Ta-1
    offsets = {e: [] for e in range(len(lengths))}
    for i in range(len(sampler)):
        s = sampler.sample(i)
        assert s["obs"]["state"].shape == (to, 1) and s["action"].shape == (h, 2)
        assert s["action"].dtype == np.float32 and s["obs"]["state"].dtype == np.float64
        assert s["action_is_pad"].dtype == bool and s["action_is_pad"].shape == (h,)
        e = int(s["action"][0, 0])
        n = lengths[e]
        start = int(sampler.index[i, 2])
        offsets[e].append(start)
        rel = start + np.arange(h)
        np.testing.assert_array_equal(s["action_is_pad"], (rel < 0) | (rel >= n))
        np.testing.assert_array_equal(s["action"][:, 1], np.clip(rel, 0, n - 1))  # edge repetition
        np.testing.assert_array_equal(s["obs"]["state"][:, 0], 1000 * e + np.clip(rel[:to], 0, n - 1))
        assert np.all(s["action"][:, 0] == e)
        # the current observation and the executed actions chunk[To-1 : To-1+Ta] start inside the episode
        assert not s["action_is_pad"][to - 1]
    for e, n in enumerate(lengths):
        assert offsets[e] == list(range(-(to - 1), n - h + (ta - 1) + 1))
    assert len(sampler) == sum(n - h + (ta - 1) + (to - 1) + 1 for n in lengths)


def test_window_index_offsets():
    idx = window_index(np.array([10, 15]), [1], horizon=4, pad_before=1, pad_after=2)
    assert idx[:, 0].tolist() == [10] * 5 and idx[:, 1].tolist() == [5] * 5
    assert idx[:, 2].tolist() == [-1, 0, 1, 2, 3]


def test_zarr_backed_sampler_equals_memory(tmp_path):
    mem = _indexed_buffer([7, 11])
    disk = mem.copy_to(tmp_path / "s.zarr")
    kw = dict(obs_keys=["state"], action_key="action", n_obs_steps=2, horizon=6, n_action_steps=3)
    a = SequenceSampler(mem.data, mem.episode_ends, **kw)
    b = SequenceSampler(disk.data, disk.episode_ends, **kw)
    assert len(a) == len(b)
    for i in range(len(a)):
        sa, sb = a.sample(i), b.sample(i)
        np.testing.assert_array_equal(sa["action"], sb["action"])
        np.testing.assert_array_equal(sa["obs"]["state"], sb["obs"]["state"])
        np.testing.assert_array_equal(sa["action_is_pad"], sb["action_is_pad"])


def test_episode_subset_and_errors():
    buf = _indexed_buffer([10, 10, 10])
    kw = dict(obs_keys=["state"], action_key="action", n_obs_steps=2, horizon=4, n_action_steps=2)
    s = SequenceSampler(buf.data, buf.episode_ends, episodes=[2], **kw)
    assert {int(s.sample(i)["action"][0, 0]) for i in range(len(s))} == {2}
    with pytest.raises(ConfigError, match="horizon"):
        SequenceSampler(buf.data, buf.episode_ends, **{**kw, "horizon": 2})
    with pytest.raises(ConfigError, match="n_obs_steps"):
        SequenceSampler(buf.data, buf.episode_ends, **{**kw, "n_obs_steps": 0})
    with pytest.raises(DataError, match="demo.zarr: unknown key 'image'"):
        SequenceSampler(buf.data, buf.episode_ends, where="demo.zarr", **{**kw, "obs_keys": ["image"]})
    with pytest.raises(DataError, match="no episode is long enough"):
        SequenceSampler(buf.data, buf.episode_ends, **{**kw, "horizon": 40, "n_action_steps": 1})


def test_sample_batch_equals_stacked_samples(tmp_path):
    mem = _indexed_buffer([7, 11, 4])
    disk = mem.copy_to(tmp_path / "b.zarr")
    kw = dict(obs_keys=["state"], action_key="action", n_obs_steps=3, horizon=6, n_action_steps=2)
    for buf in (mem, disk):  # vectorized (numpy) and per-window (zarr) paths
        s = SequenceSampler(buf.data, buf.episode_ends, **kw)
        idx = [0, len(s) - 1, 5, 5, 9, 2]
        batch = s.sample_batch(idx)
        np.testing.assert_array_equal(batch["action"], np.stack([s.sample(i)["action"] for i in idx]))
        np.testing.assert_array_equal(batch["obs"]["state"], np.stack([s.sample(i)["obs"]["state"] for i in idx]))
        np.testing.assert_array_equal(batch["action_is_pad"], np.stack([s.sample(i)["action_is_pad"] for i in idx]))
        assert batch["action"].shape == (6, 6, 2) and batch["obs"]["state"].shape == (6, 3, 1)
