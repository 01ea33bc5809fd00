"""Residual MLP velocity network with FiLM conditioning on [time embedding, condition]."""

from __future__ import annotations

import torch
from torch import nn

from lfm_policy.nets.embeddings import SinusoidalTimeEmbedding


class FiLMResBlock(nn.Module):
    """Pre-norm residual block: h + W2·act(FiLM(W1·act(LN(h)))).

    FiLM scale/shift come from the conditioning vector; the last layer starts at zero so the block
    is the identity at initialization.
    """

    def __init__(self, width: int, cond_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.lin2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()
        nn.init.zeros_(self.lin2.weight)
        nn.init.zeros_(self.lin2.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Apply the block. h: (B, width), c: (B, cond_dim) → (B, width)."""
        scale, shift = self.film(c).chunk(2, dim=-1)  # (B, width) each
        z = self.lin1(self.act(self.norm(h)))
        z = z * (1 + scale) + shift
        return h + self.lin2(self.drop(self.act(z)))


class ResidualMLP(nn.Module):
    """Velocity network ``v(x, t, cond)`` over a flattened event.

    Works for any event shape: x (B, *event_shape) is flattened to (B, D), processed, and reshaped
    back. The time embedding and the condition are embedded together and modulate every residual
    block (FiLM).

    Args:
        event_shape: Shape of one sample, e.g. (2,) for 2-D points or (H, Da) for an action chunk.
        cond_dim: Size Dc of the condition vector (0 for unconditional use; then pass cond=None).
        width: Hidden width.
        depth: Number of residual blocks.
        time_dim: Size of the sinusoidal time embedding.
        dropout: Dropout inside the residual blocks.

    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        cond_dim: int = 0,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.cond_dim = cond_dim
        d = 1
        for s in self.event_shape:
            d *= s
        self.time_emb = SinusoidalTimeEmbedding(time_dim)
        self.cond_mlp = nn.Sequential(
            nn.Linear(time_dim + cond_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(FiLMResBlock(width, width, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at (x, t) given cond.

        Args:
            x: (B, *event_shape) current state.
            t: (B,) flow time in [0, 1].
            cond: (B, Dc) condition, or None when ``cond_dim == 0``.

        Returns:
            (B, *event_shape) velocity.

        """
        b = x.shape[0]
        if (cond is None) != (self.cond_dim == 0):
            raise ValueError(f"ResidualMLP built with cond_dim={self.cond_dim} got cond={cond is not None}")
        c = self.time_emb(t).to(x.dtype)  # (B, time_dim)
        if cond is not None:
            if cond.shape != (b, self.cond_dim):
                raise ValueError(f"cond must have shape ({b}, {self.cond_dim}), got {tuple(cond.shape)}")
            c = torch.cat([c, cond.to(x.dtype)], dim=-1)  # (B, time_dim + Dc)
        c = self.cond_mlp(c)  # (B, width)
        h = self.inp(x.reshape(b, -1))  # (B, D) -> (B, width)
        for blk in self.blocks:
            h = blk(h, c)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape)  # (B, D) -> event
