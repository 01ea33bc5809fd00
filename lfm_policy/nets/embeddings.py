"""Embeddings of the continuous flow time t ∈ [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal features of a continuous time, as in Transformer positional encodings.

    Flow time lives in [0, 1], where raw sinusoids with periods up to ``max_period`` would hardly
    change; ``scale`` (default 1000) stretches t to the range diffusion step indices cover, so nearby
    times get clearly separated embeddings (tests check it).

    Args:
        dim: Output size (even).
        scale: Multiplier applied to t before the sinusoids.
        max_period: Longest period of the sinusoids.

    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"SinusoidalTimeEmbedding.dim must be an even number ≥ 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times.

        Args:
            t: (B,) times (any float dtype).

        Returns:
            (B, dim) embedding [sin, cos].

        """
        args = (t.float() * self.scale)[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([args.sin(), args.cos()], dim=-1)
