"""Training on a filter key: SequenceDataset(filter_key=...), DataConfig.filter_key, select_episodes."""

import numpy as np
import pytest

from lfm_policy.config import ConfigError
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.sampler import select_episodes
from lfm_policy.datasets.torch_dataset import SequenceDataset
from lfm_policy.errors import DataError
from lfm_policy.train import TrainConfig, training_windows
from lfm_policy.train_config import DataConfig

KW = dict(obs_keys=["state"], n_obs_steps=2, horizon=8, n_action_steps=4)
FILTERS = {"better": [0, 2, 4, 6, 8, 10], "okay": [1, 5, 9], "worse": [3, 7, 11]}


@pytest.fixture
def buffer_path(tmp_path, episode_factory):
    """12 episodes; step values encode the episode (state[:, 0] == episode index)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "ops.zarr"
    with ReplayBuffer.create(path, attrs={"filters": FILTERS}) as buf:
        for i in range(12):
            ep = episode_factory(rng, 10 + i, image=False)
            ep["state"][:, 0] = i
            buf.add_episode(ep)
    return path


def _episodes_of_windows(ds):
    return set(np.unique(ds[list(range(len(ds)))]["obs"]["state"][:, :, 0].numpy()).astype(int))


def test_windows_come_only_from_the_filter_keys_episodes(buffer_path):
    ds = SequenceDataset(buffer_path, **KW, filter_key="okay")
    assert ds.episodes.tolist() == [1, 5, 9] and _episodes_of_windows(ds) == {1, 5, 9}
    everything = SequenceDataset(buffer_path, **KW)
    assert everything.episodes.tolist() == list(range(12)) and len(everything) > len(ds)


def test_split_is_made_within_the_selection_and_union_keys(buffer_path):
    ds = SequenceDataset(buffer_path, **KW, filter_key="better+worse", val_ratio=0.25, seed=3)
    val = ds.get_validation_dataset()
    chosen = set(FILTERS["better"]) | set(FILTERS["worse"])
    train_eps, val_eps = set(ds.episodes.tolist()), set(val.episodes.tolist())
    assert train_eps | val_eps == chosen and not train_eps & val_eps and len(val_eps) == 2
    assert _episodes_of_windows(ds) == train_eps and _episodes_of_windows(val) == val_eps
    assert val.filter_key == "better+worse"
    capped = SequenceDataset(buffer_path, **KW, filter_key="better", max_train_episodes=2)
    assert len(capped.episodes) == 2 and set(capped.episodes.tolist()) <= set(FILTERS["better"])


def test_unknown_filter_key_names_the_file_and_lists_the_keys(buffer_path, tmp_path, episode_factory):
    with pytest.raises(DataError, match=r"ops\.zarr.*unknown filter key 'best'.*better, okay, worse"):
        SequenceDataset(buffer_path, **KW, filter_key="best")
    with pytest.raises(DataError, match="unknown filter key 'mode_left' in 'better\\+mode_left'"):
        SequenceDataset(buffer_path, **KW, filter_key="better+mode_left")
    plain = tmp_path / "plain.zarr"
    with ReplayBuffer.create(plain) as buf:
        buf.add_episode(episode_factory(np.random.default_rng(0), 10, image=False))
    with pytest.raises(DataError, match="plain.zarr.*no filters attr"):
        SequenceDataset(plain, **KW, filter_key="better")


def test_select_episodes_checks_indices():
    assert select_episodes(None, "", 3, "x").tolist() == [0, 1, 2]
    assert select_episodes({"a": [2, 0], "b": [0, 1]}, "a+b", 3, "x").tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="lists episode 5"):
        select_episodes({"a": [5]}, "a", 3, "x")
    with pytest.raises(DataError, match="selects no episodes"):
        select_episodes({"a": []}, "a", 3, "x")


def test_train_config_filter_key(buffer_path):
    assert DataConfig().filter_key == ""
    old = DataConfig.from_dict({"path": "d.zarr", "obs_keys": ["state"], "val_ratio": 0.1})  # a config from before
    assert old.filter_key == ""
    config = TrainConfig(data=DataConfig(path=str(buffer_path), obs_keys=("state",), val_ratio=0.0))
    config = config.with_overrides(["data.filter_key=worse", "policy.n_obs_steps=2", "policy.horizon=8",
                                    "policy.n_action_steps=4"])
    assert TrainConfig.from_dict(config.to_dict()).data.filter_key == "worse"
    ds = training_windows(config, ["state"])
    assert ds.episodes.tolist() == FILTERS["worse"]
    with pytest.raises(ConfigError, match="filter_key"):
        DataConfig(filter_key="better+")
