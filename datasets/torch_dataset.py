"""torch ``Dataset`` of training windows, returning the batch dict of DESIGN.md.

A sample is ``{"obs": {key: (To, ...)}, "action": (H, Da) float32, "action_is_pad": (H,) bool}``.
Low-dim observations are float32; camera frames stay uint8 (To, H, W, C) so that workers and pinned
transfers move 4× fewer bytes; :func:`images_to_float` converts a batch on the device.

Importing this module loads torch and numpy only (the zarr-backed buffer is imported when a path is
given), so policy code may import :func:`images_to_float` freely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lfm_policy.datasets.episode import is_image
from lfm_policy.datasets.sampler import SequenceSampler, select_episodes, split_episodes
from lfm_policy.errors import DataError

if TYPE_CHECKING:
    from lfm_policy.datasets.replay_buffer import ReplayBuffer


def images_to_float(batch_obs: Mapping[str, torch.Tensor], image_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Convert camera keys from uint8 (B, To, H, W, C) to float32 (B, To, C, H, W) in [0, 1].

    Other keys are returned unchanged (same tensor objects). Run it after moving the batch to the
    device so that the 4× larger float tensors never cross the host-device link.

    Raises:
        DataError: An image key is missing or not a uint8 5-D tensor.

    """
    out = dict(batch_obs)
    for key in image_keys:
        if key not in batch_obs:
            raise DataError(f"images_to_float: image key {key!r} not in batch (keys: {sorted(batch_obs)})")
        x = batch_obs[key]
        if x.dtype != torch.uint8 or x.ndim != 5:
            raise DataError(f"images_to_float: {key!r} must be uint8 (B, To, H, W, C), got {x.dtype} "
                            f"{tuple(x.shape)}")
        out[key] = x.permute(0, 1, 4, 2, 3).float().div_(255.0)
    return out


class SequenceDataset(torch.utils.data.Dataset):
    """Training (or validation) windows over a replay buffer.

    Args:
        buffer_or_path: A :class:`ReplayBuffer` or the path of one. A path is opened and, with
            ``in_memory`` (default), copied into RAM for fast random access.
        obs_keys: Observation keys (low-dim (T, D) numeric or uint8 (T, H, W, C) cameras).
        action_key: Key of the float (T, Da) actions.
        n_obs_steps: To. horizon: H. n_action_steps: Ta (see :class:`SequenceSampler`).
        split: ``"train"`` or ``"val"``.
        val_ratio, seed, max_train_episodes: Episode split (see :func:`split_episodes`), made within the
            episodes that ``filter_key`` selects.
        filter_key: Only the episodes of this filter key of the buffer's ``filters`` attr (robomimic's
            ``mask/<name>``, e.g. ``better``), or of a union ``better+okay``; ``""`` (default): all episodes.
        in_memory: Copy an on-disk buffer into memory first.

    Raises:
        DataError: Unknown keys or filter keys (names the file and key), wrong dtypes/shapes, empty split.
        ConfigError: Inconsistent To/H/Ta or split settings.

    """

    def __init__(self, buffer_or_path: ReplayBuffer | str | os.PathLike, *, obs_keys: Sequence[str],
                 action_key: str = "action", n_obs_steps: int, horizon: int, n_action_steps: int,
                 split: str = "train", val_ratio: float = 0.0, seed: int = 0,
                 max_train_episodes: int | None = None, in_memory: bool = True, filter_key: str = ""):
        if split not in ("train", "val"):
            raise DataError(f"SequenceDataset: split must be 'train' or 'val', got {split!r}")
        if isinstance(buffer_or_path, (str, os.PathLike)):
            from lfm_policy.datasets.replay_buffer import ReplayBuffer

            buffer_or_path = ReplayBuffer.open(buffer_or_path)
            if in_memory:
                buffer_or_path = buffer_or_path.copy_to_memory()
        self.buffer = buffer_or_path
        self._args = dict(obs_keys=list(obs_keys), action_key=action_key, n_obs_steps=n_obs_steps,
                          horizon=horizon, n_action_steps=n_action_steps, val_ratio=val_ratio, seed=seed,
                          max_train_episodes=max_train_episodes, filter_key=filter_key)
        where = self.buffer.where
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self._check_keys(where)
        self.filter_key = filter_key
        selected = select_episodes(self.buffer.attrs.get("filters"), filter_key, self.buffer.n_episodes, where)
        train, val = split_episodes(len(selected), val_ratio, seed, max_train_episodes)
        self.split = split
        self.episodes = selected[train if split == "train" else val]
        if not len(self.episodes):
            subset = f", filter_key={filter_key!r}: {len(selected)} episodes" if filter_key else ""
            raise DataError(f"{where}: the {split!r} split has no episodes (n_episodes="
                            f"{self.buffer.n_episodes}{subset}, val_ratio={val_ratio})")
        self.sampler = SequenceSampler(self.buffer.data, self.buffer.episode_ends, obs_keys=self.obs_keys,
                                       action_key=action_key, n_obs_steps=n_obs_steps, horizon=horizon,
                                       n_action_steps=n_action_steps, episodes=self.episodes, where=where)

    def _check_keys(self, where: str) -> None:
        available = self.buffer.keys
        for key in [*self.obs_keys, self.action_key]:
            if key not in available:
                raise DataError(f"{where}: requested key {key!r} does not exist; available keys: {available}")
        shape, dtype = self.buffer.key_spec(self.action_key)
        if dtype.kind != "f" or len(shape) != 1:
            raise DataError(f"{where}: key {self.action_key!r} must be float (T, Da) actions, got {dtype} "
                            f"per-step shape {shape}")
        self.image_keys = []
        for key in self.obs_keys:
            shape, dtype = self.buffer.key_spec(key)
            if is_image((0, *shape), dtype):
                self.image_keys.append(key)
            elif dtype.kind not in "biuf" or len(shape) != 1:
                raise DataError(f"{where}: obs key {key!r} must be low-dim (T, D) numeric or uint8 "
                                f"(T, H, W, C) images, got {dtype} per-step shape {shape}")

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int | Sequence[int]) -> dict[str, Any]:
        """One window, or — given a sequence of indices — a whole batch ``{"obs": {key: (B, To, ...)}, ...}``."""
        if isinstance(i, (int, np.integer)):
            return self._to_torch(self.sampler.sample(int(i)))
        return self._to_torch(self.sampler.sample_batch(i))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Many items at once (the DataLoader calls this per batch): one vectorized gather per key.

        Returns the items as views of the batched tensors; ``default_collate`` stacks them again.
        """
        batch = self._to_torch(self.sampler.sample_batch(indices))
        return [{"obs": {k: v[j] for k, v in batch["obs"].items()}, "action": batch["action"][j],
                 "action_is_pad": batch["action_is_pad"][j]} for j in range(len(indices))]

    def make_loader(self, batch_size: int, *, shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                    generator: torch.Generator | None = None, sampler: torch.utils.data.Sampler | None = None,
                    **kwargs: Any) -> torch.utils.data.DataLoader:
        """A DataLoader that builds each batch with one vectorized gather per key (fastest path).

        Equivalent to ``DataLoader(self, batch_size, shuffle=shuffle, drop_last=drop_last, ...)`` but the
        dataset receives the batch's index list (``batch_size=None`` + a ``BatchSampler``), so no
        per-item work or re-stacking happens. ``sampler`` (e.g. a ``DistributedSampler``) replaces the
        random/sequential index sampler; other keyword arguments go to ``DataLoader``.
        """
        if sampler is None:
            sampler = (torch.utils.data.RandomSampler(self, generator=generator) if shuffle
                       else torch.utils.data.SequentialSampler(self))
        batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
        return torch.utils.data.DataLoader(self, batch_size=None, sampler=batches, num_workers=num_workers,
                                           **kwargs)

    def _to_torch(self, s: dict[str, Any]) -> dict[str, Any]:
        """Convert numpy window(s) to tensors: low-dim obs and actions float32, images stay uint8."""
        obs = {}
        for key, value in s["obs"].items():
            if key not in self.image_keys:
                value = value.astype(np.float32, copy=False)
            obs[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {
            "obs": obs,
            "action": torch.from_numpy(np.ascontiguousarray(s["action"], dtype=np.float32)),
            "action_is_pad": torch.from_numpy(s["action_is_pad"]),
        }

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-frame shapes as the model sees them: (C, H, W) for cameras, (D,) for low-dim keys."""
        out = {}
        for key in self.obs_keys:
            shape = self.buffer.key_spec(key)[0]
            out[key] = (shape[2], shape[0], shape[1]) if key in self.image_keys else tuple(shape)
        return out

    @property
    def action_dim(self) -> int:
        """Da."""
        return int(self.buffer.key_spec(self.action_key)[0][0])

    def get_validation_dataset(self) -> SequenceDataset:
        """The same windows over the validation episodes (shares the buffer)."""
        return SequenceDataset(self.buffer, split="val", **self._args)

    def get_stats(self, quantiles: Sequence[float] = (0.01, 0.99), *,
                  include_images: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """:func:`~lfm_policy.datasets.stats.compute_stats` over this split's episodes.

        Covers the low-dim obs keys and the action key (what the normalizer needs); camera keys only
        with ``include_images`` (per-channel statistics; a full pass over every frame).
        """
        from lfm_policy.datasets.stats import compute_stats

        keys = [k for k in self.obs_keys if include_images or k not in self.image_keys] + [self.action_key]
        return compute_stats(self.buffer, keys, quantiles, episodes=self.episodes)
