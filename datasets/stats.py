"""Per-key statistics of a dataset, streamed one episode at a time (for the normalizer and ``data info``).

Works on any *episode source*: an object with ``keys``, ``n_episodes``, ``key_spec(key)`` and
``get_episode(i, keys)`` — :class:`~lfm_policy.datasets.replay_buffer.ReplayBuffer` and
:class:`~lfm_policy.datasets.robomimic_hdf5.RobomimicFile` both are.

* Low-dim keys: min/max/mean/std per dimension (shape = the per-step shape) with a numerically stable
  merge of per-episode moments; quantiles are exact (the low-dim values are gathered, which costs
  ``n_steps × dim × 8`` bytes).
* Image keys (uint8 (T, H, W, C)): per-channel statistics, shape (C,), computed exactly from 256-bin
  histograms, so no more than one episode's frames are in memory at a time.
* NaN/Inf in a float key raise a DataError naming the key, episode and step (the default), or, with
  ``nonfinite="skip"`` (``data info``), are left out of the statistics and counted.
"""

from __future__ import annotations

import warnings
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
                  episodes: Sequence[int] | None = None, *,
                  nonfinite: str = "raise") -> dict[str, dict[str, np.ndarray]]:
    """Statistics of each key over the chosen episodes.

    Args:
        source: Replay buffer or robomimic file.
        keys: Keys to describe (default: all).
        quantiles: Levels in [0, 1] to report, named by :func:`quantile_name`.
        episodes: Episode indices to include (default: all; e.g. the training split).
        nonfinite: ``"raise"`` on NaN/Inf, or ``"skip"``: compute each dimension's statistics over its
            finite values and add ``"nonfinite"`` (count of non-finite values) and ``"first_nonfinite"``
            ([episode, step]) to the keys that have any.

    Returns:
        ``{key: {"min", "max", "mean", "std", "q01", "q99", ..., "count"}}`` of float64 arrays with
        the per-step shape (low-dim) or (C,) (images); ``count`` is the number of steps. A dimension
        with no finite value has NaN statistics.

    Raises:
        DataError: Unknown key, no episodes, a quantile outside [0, 1], or (``nonfinite="raise"``)
            NaN/Inf in a float key (names the dataset, key, episode and step).

    """
    if nonfinite not in ("raise", "skip"):
        raise DataError(f"compute_stats: nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
    where = getattr(source, "where", "dataset")
    keys = list(source.keys if keys is None else keys)
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise DataError(f"compute_stats: quantile {q} is outside [0, 1]")
    episodes = list(range(source.n_episodes) if episodes is None else episodes)
    if not episodes:
        raise DataError(f"{where}: no episodes to compute statistics over")
    accs: dict[str, _Accumulator] = {}
    for key in keys:
        shape, dtype = source.key_spec(key)
        accs[key] = _ImageAccumulator(shape[-1]) if is_image((0, *shape), dtype) else _LowDimAccumulator()
    for i in episodes:
        episode = source.get_episode(i, keys)
        for key in keys:
            x = episode[key]
            if x.dtype.kind == "f":
                bad = ~np.isfinite(x)
                if bad.any():
                    step = int(np.argwhere(bad)[0][0])
                    if nonfinite == "raise":
                        raise DataError(f"{where}: episode {i}: key {key!r} contains NaN/Inf (first at step {step})")
                    accs[key].flag(int(bad.sum()), i, step)
            accs[key].add(x)
    return {key: acc.result(quantiles) for key, acc in accs.items()}


class _Accumulator(Protocol):
    def add(self, x: np.ndarray) -> None: ...

    def flag(self, count: int, episode: int, step: int) -> None: ...

    def result(self, quantiles: Sequence[float]) -> dict[str, np.ndarray]: ...


class _NonFinite:
    """Count and first place of the non-finite values seen (``nonfinite="skip"``)."""

    def __init__(self) -> None:
        self.nonfinite = 0
        self.first: tuple[int, int] | None = None

    def flag(self, count: int, episode: int, step: int) -> None:
        self.nonfinite += count
        if self.first is None:
            self.first = (episode, step)

    def report(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.nonfinite:
            out["nonfinite"] = np.asarray(self.nonfinite, dtype=np.float64)
            out["first_nonfinite"] = np.asarray(self.first, dtype=np.float64)
        return out


class _LowDimAccumulator(_NonFinite):
    """Chan et al.'s parallel mean/variance merge (per dimension) plus gathered values for exact quantiles.

    Non-finite values (only reach here with ``nonfinite="skip"``) are left out dimension by dimension.
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.n: np.ndarray | None = None  # finite values per dimension
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.values: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        finite = np.isfinite(x)
        if finite.all():
            n_b = np.full(x.shape[1:], float(x.shape[0]))
            mean_b = x.mean(axis=0)
            m2_b = ((x - mean_b) ** 2).sum(axis=0)
            lo, hi = x.min(axis=0), x.max(axis=0)
        else:
            n_b = finite.sum(axis=0).astype(np.float64)
            mean_b = np.divide(np.where(finite, x, 0.0).sum(axis=0), n_b, out=np.zeros_like(n_b), where=n_b > 0)
            m2_b = (np.where(finite, x - mean_b, 0.0) ** 2).sum(axis=0)
            lo, hi = np.where(finite, x, np.inf).min(axis=0), np.where(finite, x, -np.inf).max(axis=0)
            x = np.where(finite, x, np.nan)
        self.steps += x.shape[0]
        if self.mean is None:
            self.n, self.mean, self.m2, self.min, self.max = n_b, mean_b, m2_b, lo, hi
        else:
            n = self.n + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)
            self.m2 = self.m2 + m2_b + delta**2 * np.divide(self.n * n_b, n, out=np.zeros_like(n), where=n > 0)
            self.n = n
            self.min = np.minimum(self.min, lo)
            self.max = np.maximum(self.max, hi)
        self.values.append(x)

    def result(self, quantiles: Sequence[float]) -> dict[str, np.ndarray]:
        empty = self.n == 0  # dimensions without a finite value get NaN statistics
        var = np.divide(self.m2, self.n, out=np.zeros_like(self.n), where=~empty)
        out = {name: np.where(empty, np.nan, v) for name, v in
               (("min", self.min), ("max", self.max), ("mean", self.mean), ("std", np.sqrt(var)))}
        out["count"] = np.asarray(self.steps, dtype=np.float64)
        if quantiles:
            values = np.concatenate(self.values)
            if self.nonfinite:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN dimensions give NaN
                    qs = np.nanquantile(values, list(quantiles), axis=0)
            else:
                qs = np.quantile(values, list(quantiles), axis=0)
            for q, v in zip(quantiles, qs):
                out[quantile_name(q)] = v
        return self.report(out)


class _ImageAccumulator(_NonFinite):
    """Per-channel 256-bin histograms of uint8 frames."""

    def __init__(self, channels: int):
        super().__init__()
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
        return self.report(out)
