"""Evaluation records and statistics: per-episode results, Wilson intervals, latency percentiles."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Args:
        successes: Number of successes k (0 ≤ k ≤ n).
        n: Number of trials; (0, 1) is returned for n = 0.
        confidence: Two-sided confidence level.

    Returns:
        (low, high), e.g. 8/10 at 95 % → (0.490, 0.943); low is exactly 0 at k = 0 and high exactly 1
        at k = n (the formula gives them only up to rounding).

    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 ≤ successes ≤ n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mode_coverage(success_modes: dict[str, int], modes: list[str]) -> dict[str, float | None]:
    """How many of a task's modes the successful episodes use, and how evenly.

    Args:
        success_modes: Successful episodes per mode (``summary()["success_modes"]``).
        modes: The task's modes (e.g. those of its demonstrations); empty for a unimodal task.

    Returns:
        ``mode_coverage``: fraction of ``modes`` with at least one success; ``mode_entropy``: entropy
        of the successes' mode distribution divided by ``log(len(modes))`` (1: all modes equally often,
        0: one mode only). Both None without modes (or, for the entropy, without successes).

    """
    if not modes:
        return {"mode_coverage": None, "mode_entropy": None}
    counts = np.array([success_modes.get(m, 0) for m in modes], float)
    coverage = float((counts > 0).mean())
    total = counts.sum()
    if total == 0 or len(modes) < 2:
        return {"mode_coverage": coverage, "mode_entropy": None if total == 0 else 1.0}
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log(p)).sum() / math.log(len(modes)))
    return {"mode_coverage": coverage, "mode_entropy": max(0.0, entropy)}  # no -0.0


@dataclass
class EpisodeResult:
    """One evaluated episode.

    Attributes:
        index: Episode number i in the run (seed = seed_start + i).
        seed: ``env.reset`` seed.
        success: ``info["is_success"]`` at the end (False when the episode crashed).
        ret: Sum of rewards.
        length: Single env steps executed.
        mode: ``info["mode"]`` at the end, where the task reports one.
        collision: ``info["collision"]`` at the end: the episode ended in an obstacle or keep-out
            zone (the toy tasks and the ``-detour`` variants report it).
        error: ``"Type: message"`` when the env or its worker crashed, else None.
        video: Path of the episode's video relative to the results directory, if one was written.

    """

    index: int
    seed: int
    success: bool
    ret: float
    length: int
    mode: str | None = None
    error: str | None = None
    video: str | None = None
    collision: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON record (``return`` instead of ``ret``)."""
        d = asdict(self)
        d["return"] = d.pop("ret")
        return d


@dataclass
class EvalResults:
    """Everything one evaluation run measured.

    Attributes:
        episodes: Finished episodes, ordered by index.
        chunk_latency_s: Wall time of every batched policy call (one chunk for each active env).
        batch_sizes: Number of envs served by each of those calls.
        wall_s: Wall time of the whole run.
        requested: Episodes asked for.
        interrupted: The run was stopped (Ctrl-C) before every episode finished.
        environment: The environment record (:func:`lfm_policy.eval.environment.environment_record`).

    """

    episodes: list[EpisodeResult] = field(default_factory=list)
    chunk_latency_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    requested: int = 0
    interrupted: bool = False
    environment: dict[str, Any] | None = None

    @property
    def success_rate(self) -> float:
        """Fraction of finished episodes that succeeded (NaN when none finished)."""
        return sum(e.success for e in self.episodes) / len(self.episodes) if self.episodes else float("nan")

    def summary(self) -> dict[str, Any]:
        """Aggregate numbers (success with a Wilson 95 % interval, means, latency percentiles)."""
        eps = sorted(self.episodes, key=lambda e: e.index)
        n, k = len(eps), sum(e.success for e in eps)
        lo, hi = wilson_interval(k, n)
        lat = np.asarray(self.chunk_latency_s, float) * 1e3
        modes = Counter(e.mode for e in eps if e.success and e.mode is not None)
        return {
            "n_episodes": n,
            "n_success": k,
            "success_rate": k / n if n else None,
            "success_ci95": [lo, hi],
            "mean_return": float(np.mean([e.ret for e in eps])) if n else None,
            "mean_length": float(np.mean([e.length for e in eps])) if n else None,
            "n_errors": sum(e.error is not None for e in eps),
            "n_collisions": sum(e.collision for e in eps),
            "success_modes": dict(sorted(modes.items())),
            "chunk_latency_ms": {
                "p50": float(np.percentile(lat, 50)) if lat.size else None,
                "p95": float(np.percentile(lat, 95)) if lat.size else None,
                "mean": float(lat.mean()) if lat.size else None,
                "n_calls": int(lat.size),
                "mean_batch": float(np.mean(self.batch_sizes)) if self.batch_sizes else None,
            },
            "wall_s": self.wall_s,
            "episodes_per_min": 60.0 * n / self.wall_s if self.wall_s > 0 else None,
            "interrupted": self.interrupted,
        }
