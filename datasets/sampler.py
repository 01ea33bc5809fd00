"""Fixed-length training windows over episodes, padded at episode boundaries as in Diffusion Policy.

A sample is a window of H (``horizon``) consecutive steps starting at episode step ``s``:
observations are the first To (``n_obs_steps``) steps of the window and actions all H steps. Windows
may start up to To − 1 steps before the episode (``pad_before``) and end up to Ta − 1 steps after it
(``pad_after``, Ta = ``n_action_steps``); steps outside the episode repeat its first/last value and
are flagged in ``action_is_pad``. So the first episode step is the current observation (window index
To − 1) of the first window, the executed actions ``chunk[To-1 : To-1+Ta]`` always start inside the
episode, and each step ``0 .. L − H + Ta + To − 2`` of an episode of length L is the current
observation of exactly one window (every step when H = To − 1 + Ta).

This module needs only numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lfm_policy.config import check
from lfm_policy.errors import DataError


def split_episodes(n_episodes: int, val_ratio: float, seed: int,
                   max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into train and validation sets (episode level, reproducible).

    With ``val_ratio > 0`` at least one episode goes to validation and at least one stays in
    training (when there are two or more episodes). ``max_train_episodes`` then keeps a random subset
    of the training episodes (for data-scaling studies); validation is unaffected.

    Args:
        n_episodes: Number of episodes.
        val_ratio: Fraction of episodes held out, in [0, 1).
        seed: Seed of the split.
        max_train_episodes: Optional cap on the training episodes.

    Returns:
        ``(train_indices, val_indices)``, sorted int64 arrays.

    """
    check(n_episodes >= 0, "n_episodes", f"must be ≥ 0, got {n_episodes}")
    check(0.0 <= val_ratio < 1.0, "val_ratio", f"must be in [0, 1), got {val_ratio}")
    check(max_train_episodes is None or max_train_episodes >= 1, "max_train_episodes",
          f"must be ≥ 1 or None, got {max_train_episodes}")
    rng = np.random.default_rng(seed)
    n_val = 0
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    perm = rng.permutation(n_episodes)
    val = np.sort(perm[:n_val])
    train = np.sort(perm[n_val:])
    if max_train_episodes is not None and len(train) > max_train_episodes:
        train = np.sort(rng.choice(train, size=max_train_episodes, replace=False))
    return train.astype(np.int64), val.astype(np.int64)


def select_episodes(filters: Mapping[str, Sequence[int]] | None, filter_key: str, n_episodes: int,
                    where: str) -> np.ndarray:
    """Episode indices of filter key ``filter_key`` (a name, or a union ``a+b``) in ``filters``.

    Args:
        filters: The buffer's ``filters`` attr, ``{name: [episode indices]}`` (robomimic's ``mask/<name>``).
        filter_key: A name in ``filters``, or names joined by ``+`` (their union); ``""`` selects all.
        n_episodes: Episodes in the buffer (indices must lie in ``[0, n_episodes)``).
        where: The buffer, named in error messages.

    Returns:
        Sorted unique int64 indices.

    Raises:
        DataError: An unknown key (the message lists the available ones), an out-of-range index, or an
            empty selection.

    """
    if not filter_key:
        return np.arange(n_episodes, dtype=np.int64)
    filters = dict(filters or {})
    names = filter_key.split("+")
    available = ", ".join(sorted(filters)) if filters else "none (the buffer has no filters attr)"
    for name in names:
        if name not in filters:
            raise DataError(f"{where}: unknown filter key {name!r}" + (f" in {filter_key!r}" if len(names) > 1 else "")
                            + f"; available filter keys: {available}")
    chosen = np.unique(np.concatenate([np.asarray(filters[n], dtype=np.int64).reshape(-1) for n in names]))
    bad = chosen[(chosen < 0) | (chosen >= n_episodes)]
    if len(bad):
        raise DataError(f"{where}: filter key {filter_key!r} lists episode {int(bad[0])}, but the buffer has "
                        f"{n_episodes} episodes")
    if not len(chosen):
        raise DataError(f"{where}: filter key {filter_key!r} selects no episodes")
    return chosen


def window_index(episode_ends: np.ndarray, episodes: Sequence[int], *, horizon: int, pad_before: int,
                 pad_after: int) -> np.ndarray:
    """All valid windows as an (N, 3) int64 array of ``(episode_start, episode_length, offset)``.

    ``offset`` is the window's first step relative to the episode start, in
    ``[-pad_before, length - horizon + pad_after]``. Episodes too short for any window contribute none.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    rows = []
    for ep in episodes:
        start, length = int(starts[ep]), int(ends[ep] - starts[ep])
        offsets = np.arange(-pad_before, length - horizon + pad_after + 1, dtype=np.int64)
        if len(offsets):
            rows.append(np.stack([np.full_like(offsets, start), np.full_like(offsets, length), offsets], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


class SequenceSampler:
    """Windows of To observations and H actions from a replay buffer.

    Args:
        data: ``{key: array}`` with all episodes concatenated (``ReplayBuffer.data``; numpy or zarr).
        episode_ends: (n_episodes,) exclusive end step of each episode.
        obs_keys: Observation keys returned for the first To steps of each window.
        action_key: Key of the (T, Da) actions.
        n_obs_steps: To ≥ 1.
        horizon: H, actions per sample; must satisfy To − 1 + Ta ≤ H.
        n_action_steps: Ta ≥ 1, executed actions per chunk (sets ``pad_after`` = Ta − 1).
        episodes: Episode indices to sample from (default: all).

    Raises:
        ConfigError: Inconsistent To/H/Ta.
        DataError: An unknown key, or no episode long enough for one window.

    """

    def __init__(self, data: Mapping[str, Any], episode_ends: np.ndarray, *, obs_keys: Sequence[str],
                 action_key: str, n_obs_steps: int, horizon: int, n_action_steps: int,
                 episodes: Sequence[int] | None = None, where: str = "<buffer>"):
        check(n_obs_steps >= 1, "n_obs_steps", f"must be ≥ 1, got {n_obs_steps}")
        check(n_action_steps >= 1, "n_action_steps", f"must be ≥ 1, got {n_action_steps}")
        check(n_obs_steps - 1 + n_action_steps <= horizon, "horizon",
              f"must be ≥ n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps}, got {horizon}")
        for key in [*obs_keys, action_key]:
            if key not in data:
                raise DataError(f"{where}: unknown key {key!r}; available keys: {sorted(data)}")
        self.data = data
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.n_action_steps = n_action_steps
        episodes = range(len(episode_ends)) if episodes is None else episodes
        self.episodes = np.asarray(list(episodes), dtype=np.int64)
        self.index = window_index(episode_ends, self.episodes, horizon=horizon, pad_before=n_obs_steps - 1,
                                  pad_after=n_action_steps - 1)
        if len(self.episodes) and not len(self.index):
            lengths = np.diff(np.asarray(episode_ends), prepend=0)[self.episodes]
            raise DataError(f"{where}: no episode is long enough for one window (horizon {horizon}, "
                            f"n_obs_steps {n_obs_steps}, n_action_steps {n_action_steps}; longest episode "
                            f"has {int(lengths.max())} steps)")

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, i: int) -> dict[str, Any]:
        """Window ``i`` as numpy arrays.

        Returns:
            ``{"obs": {key: (To, ...)}, "action": (H, Da), "action_is_pad": (H,) bool}`` with the
            stored dtypes (padding repeats the episode's first/last step).

        """
        start, length, offset = self.index[i].tolist()
        obs = {k: _window(self.data[k], start, offset, self.n_obs_steps, length) for k in self.obs_keys}
        action = _window(self.data[self.action_key], start, offset, self.horizon, length)
        rel = offset + np.arange(self.horizon)
        return {"obs": obs, "action": action, "action_is_pad": (rel < 0) | (rel >= length)}


    def sample_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Windows ``indices`` stacked, equal to stacking :meth:`sample` over them.

        Returns ``{"obs": {key: (B, To, ...)}, "action": (B, H, Da), "action_is_pad": (B, H)}``. For
        numpy-backed data this is one vectorized gather per key (much cheaper than B calls).
        """
        if not all(isinstance(self.data[k], np.ndarray) for k in [*self.obs_keys, self.action_key]):
            items = [self.sample(int(i)) for i in indices]
            return {"obs": {k: np.stack([it["obs"][k] for it in items]) for k in self.obs_keys},
                    "action": np.stack([it["action"] for it in items]),
                    "action_is_pad": np.stack([it["action_is_pad"] for it in items])}
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        start, length, offset = rows[:, :1], rows[:, 1:2], rows[:, 2:3]
        rel = offset + np.arange(self.horizon)  # (B, H) episode steps
        act_rows = start + np.clip(rel, 0, length - 1)
        obs_rows = act_rows[:, :self.n_obs_steps]
        return {"obs": {k: self.data[k][obs_rows] for k in self.obs_keys},
                "action": self.data[self.action_key][act_rows],
                "action_is_pad": (rel < 0) | (rel >= length)}


def _window(array: Any, start: int, offset: int, count: int, length: int) -> np.ndarray:
    """Steps ``offset .. offset+count-1`` of the episode at row ``start``, edge values repeated.

    Reads one contiguous slice (cheap for zarr too) and returns a new array, never a view into the buffer.
    """
    lo, hi = max(offset, 0), min(offset + count, length)
    block = np.asarray(array[start + lo:start + hi])
    front, back = lo - offset, offset + count - hi
    if not front and not back:
        return block.copy() if isinstance(array, np.ndarray) else block
    idx = np.concatenate([np.zeros(front, dtype=np.int64), np.arange(hi - lo), np.full(back, hi - lo - 1)])
    return block[idx]
