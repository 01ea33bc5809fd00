"""Per-key statistics of a dataset, streamed one episode at a time (for the normalizer and ``data info``).

Works on any *episode source*: an object with ``keys``, ``n_episodes``, ``key_spec(key)`` and
``get_episode(i, keys)`` — :class:`~lfm_policy.datasets.replay_buffer.ReplayBuffer` and
:class:`~lfm_policy.datasets.robomimic_hdf5.RobomimicFile` both are.

* Low-dim keys: min/max/mean/std per dimension (shape = the per-step shape) with a numerically stable
  merge of per-episode moments; quantiles are exact (the low-dim values are gathered, which costs
  ``n_steps × dim × 8`` bytes).
* Image keys (uint8 (T, H, W, C)): per-channel statistics, shape (C,), computed exactly from 256-bin
  histograms, so no more than one episode's frames are in memory at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from lfm_policy.datasets.episode import is_image
from lfm_policy.errors import DataError


class EpisodeSource(Protocol):
    """What :func:`compute_stats` reads from."""

    @property
    def keys(self) -> list[str]: ...  # noqa: D102

    @property
    def n_episodes(self) -> int: ...  # noqa: D102

    def key_spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]: ...  # noqa: D102

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]: ...  # noqa: D102


def quantile_name(q: float) -> str:
    """Name of a quantile entry: 0.01 → ``"q01"``, 0.99 → ``"q99"``, 0.995 → ``"q99.5"``."""
    pct = round(q * 100, 6)
    return f"q{int(pct):02d}" if pct == int(pct) else f"q{pct:g}"


def compute_stats(source: EpisodeSource, keys: Sequence[str] | None = None,
                  quantiles: Sequence[float] = (0.01, 0.99),
                  episodes: Sequence[int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of each key over the chosen episodes.

    Args:
        source: Replay buffer or robomimic file.
        keys: Keys to describe (default: all).
        quantiles: Levels in [0, 1] to report, named by :func:`quantile_name`.
        episodes: Episode indices to include (default: all; e.g. the training split).

    Returns:
        ``{key: {"min", "max", "mean", "std", "q01", "q99", ..., "count"}}`` of float64 arrays with
        the per-step shape (low-dim) or (C,) (images); ``count`` is the number of steps.

    Raises:
        DataError: Unknown key, no episodes, or a quantile outside [0, 1].

    """
    keys = list(source.keys if keys is None else keys)
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise DataError(f"compute_stats: quantile {q} is outside [0, 1]")
    episodes = list(range(source.n_episodes) if episodes is None else episodes)
    if not episodes:
        raise DataError(f"{getattr(source, 'where', 'dataset')}: no episodes to compute statistics over")
    accs: dict[str, _Accumulator] = {}
    for key in keys:
        shape, dtype = source.key_spec(key)
        accs[key] = _ImageAccumulator(shape[-1]) if is_image((0, *shape), dtype) else _LowDimAccumulator()
    for i in episodes:
        episode = source.get_episode(i, keys)
        for key in keys:
            accs[key].add(episode[key])
    return {key: acc.result(quantiles) for key, acc in accs.items()}


class _Accumulator(Protocol):
    def add(self, x: np.ndarray) -> None: ...

    def result(self, quantiles: Sequence[float]) -> dict[str, np.ndarray]: ...


class _LowDimAccumulator:
    """Chan et al.'s parallel mean/variance merge plus gathered values for exact quantiles."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.values: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            self.min, self.max = x.min(axis=0), x.max(axis=0)
        else:
            n = self.n + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / n)
            self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
            self.n = n
            self.min = np.minimum(self.min, x.min(axis=0))
            self.max = np.maximum(self.max, x.max(axis=0))
        self.values.append(x)

    def result(self, quantiles: Sequence[float]) -> dict[str, np.ndarray]:
        out = {"min": self.min, "max": self.max, "mean": self.mean, "std": np.sqrt(self.m2 / self.n),
               "count": np.asarray(self.n, dtype=np.float64)}
        if quantiles:
            qs = np.quantile(np.concatenate(self.values), list(quantiles), axis=0)
            for q, v in zip(quantiles, qs):
                out[quantile_name(q)] = v
        return out


class _ImageAccumulator:
    """Per-channel 256-bin histograms of uint8 frames."""

    def __init__(self, channels: int):
        self.channels = channels
        self.hist = np.zeros((channels, 256), dtype=np.int64)
        self.frames = 0

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, self.channels).astype(np.int64) + 256 * np.arange(self.channels)
        self.hist += np.bincount(flat.ravel(), minlength=256 * self.channels).reshape(self.channels, 256)
        self.frames += x.shape[0]

    def result(self, quantiles: Sequence[float]) -> dict[str, np.ndarray]:
        levels = np.arange(256, dtype=np.float64)
        count = self.hist.sum(axis=1)
        if not count.all():
            raise DataError("compute_stats: image key has no pixels")
        mean = (self.hist * levels).sum(axis=1) / count
        var = (self.hist * (levels - mean[:, None]) ** 2).sum(axis=1) / count
        present = self.hist > 0
        lo = np.argmax(present, axis=1).astype(np.float64)
        out: dict[str, Any] = {
            "min": lo, "max": (255 - np.argmax(present[:, ::-1], axis=1)).astype(np.float64),
            "mean": mean, "std": np.sqrt(var), "count": np.asarray(self.frames, dtype=np.float64),
        }
        cdf = np.cumsum(self.hist, axis=1) / count[:, None]
        for q in quantiles:
            # np.quantile(method="inverted_cdf")'s convention: the smallest level whose cdf reaches q.
            level = np.array([np.searchsorted(c, q) for c in cdf], dtype=np.float64)
            out[quantile_name(q)] = np.maximum(level, lo)
        return out
