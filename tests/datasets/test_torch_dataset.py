import subprocess
import sys

import numpy as np
import pytest
import torch

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.stats import compute_stats
from lfm_policy.datasets.torch_dataset import SequenceDataset, images_to_float
from lfm_policy.errors import DataError
from lfm_policy.normalizer import LinearNormalizer

KW = dict(obs_keys=["camera", "state"], n_obs_steps=2, horizon=8, n_action_steps=4)


@pytest.fixture
def buffer_path(tmp_path, episode_factory):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.zarr"
    with ReplayBuffer.create(path) as buf:
        for n in [12, 15, 9, 20, 11, 14, 10, 13, 16, 12]:
            buf.add_episode(episode_factory(rng, n))
    return path


def test_items_have_the_design_batch_layout(buffer_path):
    ds = SequenceDataset(buffer_path, **KW, val_ratio=0.2, seed=1)
    item = ds[0]
    assert set(item) == {"obs", "action", "action_is_pad"} and set(item["obs"]) == {"camera", "state"}
    assert item["obs"]["camera"].dtype == torch.uint8 and item["obs"]["camera"].shape == (2, 8, 8, 3)
    assert item["obs"]["state"].dtype == torch.float32 and item["obs"]["state"].shape == (2, 4)
    assert item["action"].dtype == torch.float32 and item["action"].shape == (8, 3)
    assert item["action_is_pad"].dtype == torch.bool and item["action_is_pad"].shape == (8,)
    assert ds.image_keys == ["camera"] and ds.obs_shapes == {"camera": (3, 8, 8), "state": (4,)}
    assert ds.action_dim == 3 and isinstance(ds.buffer.data["camera"], np.ndarray)  # copied to memory

    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, num_workers=0)
    batch = next(iter(loader))
    assert batch["obs"]["camera"].shape == (5, 2, 8, 8, 3) and batch["action"].shape == (5, 8, 3)
    obs = images_to_float(batch["obs"], ds.image_keys)
    assert obs["camera"].shape == (5, 2, 3, 8, 8) and obs["camera"].dtype == torch.float32
    assert obs["state"] is batch["obs"]["state"]
    ref = batch["obs"]["camera"][1, 0, 2, 5, 1].item() / 255.0
    assert obs["camera"][1, 0, 1, 2, 5].item() == pytest.approx(ref)
    assert float(obs["camera"].max()) <= 1.0 and float(obs["camera"].min()) >= 0.0


def test_batched_paths_equal_per_item_collation(buffer_path):
    ds = SequenceDataset(buffer_path, **KW)
    idx = [3, 0, len(ds) - 1, 17, 17]
    ref = torch.utils.data.default_collate([ds[i] for i in idx])
    for batch in (ds[idx], torch.utils.data.default_collate(ds.__getitems__(idx))):
        for key in ("camera", "state"):
            assert torch.equal(batch["obs"][key], ref["obs"][key]) and batch["obs"][key].dtype == ref["obs"][key].dtype
        assert torch.equal(batch["action"], ref["action"]) and torch.equal(batch["action_is_pad"], ref["action_is_pad"])
    seen = []
    for workers in (0, 2):
        loader = ds.make_loader(16, num_workers=workers, generator=torch.Generator().manual_seed(0))
        batches = list(loader)
        assert len(batches) == len(ds) // 16 and batches[0]["obs"]["camera"].shape == (16, 2, 8, 8, 3)
        seen.append(torch.cat([b["action"] for b in batches]))
    assert torch.equal(seen[0], seen[1])  # same seed, same batches, with or without workers
    ordered = list(ds.make_loader(len(ds), shuffle=False, drop_last=False))[0]
    assert torch.equal(ordered["action"], torch.stack([ds[i]["action"] for i in range(len(ds))]))


def test_split_validation_and_stats(buffer_path):
    train = SequenceDataset(buffer_path, **KW, val_ratio=0.2, seed=1)
    val = train.get_validation_dataset()
    assert val.split == "val" and len(val.episodes) == 2 and len(train.episodes) == 8
    assert set(train.episodes).isdisjoint(val.episodes)
    assert val.buffer is train.buffer
    small = SequenceDataset(buffer_path, **KW, val_ratio=0.2, seed=1, max_train_episodes=3)
    assert len(small.episodes) == 3 and set(small.episodes) <= set(train.episodes)
    np.testing.assert_array_equal(small.get_validation_dataset().episodes, val.episodes)

    stats = train.get_stats()
    ref = compute_stats(train.buffer, ["action"], episodes=train.episodes)["action"]
    np.testing.assert_allclose(stats["action"]["max"], ref["max"])
    assert set(stats) == {"state", "action"}
    assert train.get_stats(include_images=True)["camera"]["mean"].shape == (3,)
    norm = LinearNormalizer.from_stats({k: stats[k] for k in ("state", "action")}, image_keys=train.image_keys)
    actions = torch.stack([train[i]["action"] for i in range(len(train))])
    normed = norm.normalize_key("action", actions)
    assert normed.min() >= -1 - 1e-5 and normed.max() <= 1 + 1e-5


def test_disk_backed_dataset_matches_memory(buffer_path):
    a = SequenceDataset(buffer_path, **KW)
    b = SequenceDataset(buffer_path, **KW, in_memory=False)
    for i in (0, 7, len(a) - 1):
        assert torch.equal(a[i]["obs"]["camera"], b[i]["obs"]["camera"])
        assert torch.equal(a[i]["action"], b[i]["action"])


def test_bad_keys_and_dtypes(buffer_path, episode_factory):
    with pytest.raises(DataError, match=r"d\.zarr: requested key 'wrist' does not exist"):
        SequenceDataset(buffer_path, **{**KW, "obs_keys": ["wrist"]})
    with pytest.raises(DataError, match="key 'camera' must be float"):
        SequenceDataset(buffer_path, **KW, action_key="camera")
    buf = ReplayBuffer.in_memory()
    buf.add_episode({"action": np.zeros((10, 2), np.int64), "state": np.zeros((10, 2, 2), np.float32)})
    with pytest.raises(DataError, match="<memory>: key 'action' must be float"):
        SequenceDataset(buf, obs_keys=[], n_obs_steps=1, horizon=2, n_action_steps=1)
    buf = ReplayBuffer.in_memory()
    buf.add_episode({"action": np.zeros((10, 2), np.float32), "state": np.zeros((10, 2, 2), np.float32)})
    with pytest.raises(DataError, match="obs key 'state' must be low-dim"):
        SequenceDataset(buf, obs_keys=["state"], n_obs_steps=1, horizon=2, n_action_steps=1)
    with pytest.raises(DataError, match="'val' split has no episodes"):
        SequenceDataset(buf, obs_keys=[], n_obs_steps=1, horizon=2, n_action_steps=1, split="val")
    with pytest.raises(DataError, match="image key 'x' not in batch"):
        images_to_float({"y": torch.zeros(1)}, ["x"])
    with pytest.raises(DataError, match="must be uint8"):
        images_to_float({"x": torch.zeros(1, 1, 2, 2, 3)}, ["x"])


def test_importing_the_dataset_module_stays_light():
    code = ("import sys, lfm_policy.datasets.torch_dataset, lfm_policy.datasets.sampler; "
            "print(sorted(m for m in ('zarr', 'h5py', 'mujoco', 'robosuite', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
