"""Time-embedding kinds of the chunk velocity networks, and their shared conditioning input.

Two kinds of continuous-time embedding are offered to the velocity networks:

- ``"sinusoidal"``: :class:`~lfm_policy.nets.embeddings.SinusoidalTimeEmbedding` (t stretched by
  ``scale``, default 1000, then geometric-frequency sinusoids, as Diffusion Policy's step encoder).
- ``"fourier"``: :class:`FourierTimeEmbedding`, random Gaussian frequencies of standard deviation
  ``scale`` (default 16), fixed at construction and saved in the state dict.

:func:`conditioning_vector` checks a network's inputs and builds the FiLM/adaLN input
``[time features, cond]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lfm_policy.config import check
from lfm_policy.nets.embeddings import SinusoidalTimeEmbedding

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
DEFAULT_TIME_SCALE = {"sinusoidal": 1000.0, "fourier": 16.0}


class FourierTimeEmbedding(nn.Module):
    """Random Fourier features ``[sin(2π w t), cos(2π w t)]`` with ``w ~ N(0, scale²)``.

    The frequencies are a persistent buffer drawn from a fixed seed, so two networks built with the
    same arguments embed time identically and a checkpoint restores them exactly.

    Args:
        dim: Output size (even).
        scale: Standard deviation of the frequencies (in cycles per unit of t).
        seed: Seed of the frequency draw.

    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"FourierTimeEmbedding.dim must be an even number ≥ 2, got {dim}")
        if scale <= 0:
            raise ValueError(f"FourierTimeEmbedding.scale must be > 0, got {scale}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)
        self.dim = dim
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times.

        Args:
            t: (B,) times in [0, 1] (any float dtype).

        Returns:
            (B, dim) embedding [sin, cos].

        """
        args = 2 * math.pi * t.float()[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([args.sin(), args.cos()], dim=-1)


def make_time_embedding(kind: str, dim: int, scale: float | None = None) -> nn.Module:
    """Build a time embedding ``(B,) -> (B, dim)``.

    Args:
        kind: ``"sinusoidal"`` or ``"fourier"``.
        dim: Output size (even).
        scale: Time stretch (sinusoidal) or frequency std (Fourier); None takes the kind's default
            (1000 and 16).

    Raises:
        ValueError: On an unknown kind.

    """
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}")
    scale = DEFAULT_TIME_SCALE[kind] if scale is None else float(scale)
    if kind == "sinusoidal":
        return SinusoidalTimeEmbedding(dim, scale=scale)
    return FourierTimeEmbedding(dim, scale=scale)


def conditioning_vector(net: nn.Module, x: torch.Tensor, t: torch.Tensor,
                        cond: torch.Tensor | None) -> torch.Tensor:
    """Check shapes and return ``[time_mlp(time_emb(t)), cond]`` of shape (B, time_dim + Dc).

    Shared by the chunk velocity networks, which have ``event_shape``, ``cond_dim``, ``time_emb`` and
    ``time_mlp`` attributes.

    Raises:
        ValueError: On a wrong shape of x, t or cond, or cond given to an unconditional net (or missing).

    """
    name = type(net).__name__
    if x.dim() != 3 or tuple(x.shape[1:]) != net.event_shape:
        raise ValueError(f"{name}: x must have shape (B, {net.event_shape[0]}, {net.event_shape[1]}), "
                         f"got {tuple(x.shape)}")
    b = x.shape[0]
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name}: t must have shape ({b},), got {tuple(t.shape)}")
    c = net.time_mlp(net.time_emb(t).to(x.dtype))  # (B, time_dim)
    if (cond is None) != (net.cond_dim == 0):
        got = "None" if cond is None else "a tensor"
        raise ValueError(f"{name} built with cond_dim={net.cond_dim} got cond={got}")
    if cond is None:
        return c
    if cond.shape != (b, net.cond_dim):
        raise ValueError(f"{name}: cond must have shape ({b}, {net.cond_dim}), got {tuple(cond.shape)}")
    return torch.cat([c, cond.to(x.dtype)], dim=-1)


def check_time_fields(time_embedding: str, time_dim: int, time_scale: float | None) -> None:
    """Validate the time-embedding fields shared by the network configs (ConfigError names the field)."""
    check(time_embedding in TIME_EMBEDDINGS, "time_embedding",
          f"must be one of {TIME_EMBEDDINGS}, got {time_embedding!r}")
    check(time_dim >= 2 and time_dim % 2 == 0, "time_dim", f"must be even ≥ 2, got {time_dim}")
    check(time_scale is None or time_scale > 0, "time_scale", f"must be > 0, got {time_scale}")
