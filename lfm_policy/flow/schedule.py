"""Ornstein–Uhlenbeck step and the block step-size schedule of Local Flow Matching."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def ou_step(x: torch.Tensor, gamma: float, noise: torch.Tensor) -> torch.Tensor:
    """One exact OU step of duration ``gamma`` towards N(0, I).

    ``x_r = e^(-γ) x + sqrt(1 - e^(-2γ)) z``: given x, x_r ~ N(e^(-γ) x, (1 - e^(-2γ)) I).

    Args:
        x: (B, ...) starting points.
        gamma: Step size γ > 0.
        noise: Standard normal z, same shape as x.

    Returns:
        (B, ...) diffused points.

    """
    if not gamma > 0:
        raise ValueError(f"ou_step: gamma must be > 0, got {gamma}")
    if noise.shape != x.shape:
        raise ValueError(f"ou_step: noise shape {tuple(noise.shape)} != x shape {tuple(x.shape)}")
    a = math.exp(-gamma)
    return a * x + math.sqrt(1.0 - a * a) * noise


@dataclass(frozen=True)
class OUSchedule:
    """Step sizes of the N − 1 local blocks; block N is free (maps straight to N(0, I)).

    Attributes:
        gammas: (γ_1, …, γ_{N−1}), each > 0. Empty for N = 1 (plain flow matching).

    """

    gammas: tuple[float, ...]

    def __post_init__(self) -> None:
        g = tuple(float(v) for v in self.gammas)
        for i, v in enumerate(g):
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"OUSchedule.gammas[{i}] must be a finite number > 0, got {v}")
        object.__setattr__(self, "gammas", g)

    @classmethod
    def exponential(cls, n_blocks: int, c: float, rho: float) -> OUSchedule:
        """γ_n = c·ρ^(n−1) for n = 1..N−1, the N-th block free.

        Args:
            n_blocks: N ≥ 1.
            c: First step size, > 0.
            rho: Growth factor, > 0.

        """
        if int(n_blocks) != n_blocks or n_blocks < 1:
            raise ValueError(f"OUSchedule.exponential: n_blocks must be an integer ≥ 1, got {n_blocks}")
        if not c > 0 or not rho > 0:
            raise ValueError(f"OUSchedule.exponential: c and rho must be > 0, got c={c}, rho={rho}")
        return cls(tuple(c * rho**i for i in range(int(n_blocks) - 1)))

    @classmethod
    def from_list(cls, gammas: Sequence[float]) -> OUSchedule:
        """Explicit step sizes of the local blocks (the free block is added after them)."""
        return cls(tuple(gammas))

    @property
    def n_blocks(self) -> int:
        """N, counting the free block."""
        return len(self.gammas) + 1

    def is_free(self, n: int) -> bool:
        """Whether block ``n`` (0-based) is the free last block."""
        self._check_index(n)
        return n == self.n_blocks - 1

    def gamma(self, n: int) -> float:
        """Step size of local block ``n`` (0-based)."""
        self._check_index(n)
        if self.is_free(n):
            raise ValueError(f"block {n} is the free block: it has no OU step size")
        return self.gammas[n]

    @property
    def total_local_time(self) -> float:
        """Σ γ_n over the local blocks (OU time covered before the free block)."""
        return sum(self.gammas)

    def _check_index(self, n: int) -> None:
        if not 0 <= n < self.n_blocks:
            raise IndexError(f"block index {n} out of range for a chain of {self.n_blocks} blocks")
