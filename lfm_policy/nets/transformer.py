"""A small transformer velocity network over the H action tokens of a chunk, adaLN-conditioned.

Each of the H actions is one token (Linear(Da → d_model) plus a learned position embedding); a few
pre-norm transformer blocks with full (non-causal) self-attention process them. Time and condition
enter every block through adaptive LayerNorm as in DiT ("adaLN-Zero"): a vector
``c = MLP([time embedding, cond])`` predicts per-block shift, scale and gate of both sub-layers. The
gates and the output layer start at zero, so the network starts as the zero velocity and every block
as the identity.

Compared with :class:`~lfm_policy.nets.unet1d.ConditionalUnet1D` it launches far fewer kernels
(about a dozen per layer), which is what the small local blocks of an LFM chain want.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from lfm_policy.config import Config, check
from lfm_policy.nets.time_features import check_time_fields, conditioning_vector, make_time_embedding


@dataclasses.dataclass
class TransformerConfig(Config):
    """Hyperparameters of :class:`TransformerVelocityNet`.

    Attributes:
        d_model: Token width.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads (must divide d_model).
        mlp_ratio: Hidden width of the feed-forward sub-layer, in multiples of d_model.
        dropout: Dropout on attention weights and in the feed-forward sub-layer.
        time_embedding: ``"sinusoidal"`` or ``"fourier"``.
        time_dim: Size of the time embedding.
        time_scale: Time stretch / Fourier frequency std; None takes the kind's default.

    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    time_embedding: str = "sinusoidal"
    time_dim: int = 128
    time_scale: float | None = None

    def __post_init__(self) -> None:
        check(self.d_model >= 1, "d_model", f"must be ≥ 1, got {self.d_model}")
        check(self.n_layers >= 1, "n_layers", f"must be ≥ 1, got {self.n_layers}")
        check(self.n_heads >= 1 and self.d_model % self.n_heads == 0, "n_heads",
              f"must be ≥ 1 and divide d_model={self.d_model}, got {self.n_heads}")
        check(self.mlp_ratio >= 1, "mlp_ratio", f"must be ≥ 1, got {self.mlp_ratio}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check_time_fields(self.time_embedding, self.time_dim, self.time_scale)

    def build(self, event_shape: tuple[int, int], cond_dim: int = 0) -> TransformerVelocityNet:
        """Build the network for chunks of shape ``event_shape = (H, Da)`` and condition size Dc."""
        return TransformerVelocityNet(event_shape, cond_dim, **dataclasses.asdict(self))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by c (shift, scale, gate per sub-layer)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
            nn.Linear(mlp_ratio * d_model, d_model),
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 6 * d_model))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h: (B, H, d_model) tokens, c: (B, d_model) conditioning → (B, H, d_model)."""
        b, n, d = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None, :].chunk(6, dim=-1)  # (B, 1, d)
        y = self.norm1(h) * (1 + scale1) + shift1
        q, k, v = self.qkv(y).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + gate1 * self.proj(a.transpose(1, 2).reshape(b, n, d))
        y = self.norm2(h) * (1 + scale2) + shift2
        return h + gate2 * self.mlp(y)


class TransformerVelocityNet(nn.Module):
    """Velocity network ``v(x, t, cond)`` over an action chunk, one token per action.

    Args:
        event_shape: (H, Da), the chunk shape.
        cond_dim: Size Dc of the condition vector (0 for unconditional use; then pass cond=None).
        d_model, n_layers, n_heads, mlp_ratio, dropout, time_embedding, time_dim, time_scale:
            See :class:`TransformerConfig` (validated there).

    Attributes:
        config: The :class:`TransformerConfig` of the hyperparameters.

    """

    def __init__(
        self,
        event_shape: tuple[int, int],
        cond_dim: int = 0,
        *,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        time_dim: int = 128,
        time_scale: float | None = None,
    ):
        super().__init__()
        self.config = TransformerConfig(d_model, n_layers, n_heads, mlp_ratio, dropout, time_embedding,
                                        time_dim, time_scale)
        check(len(event_shape) == 2 and all(int(s) >= 1 for s in event_shape), "event_shape",
              f"must be (H, Da) with positive sizes, got {tuple(event_shape)}")
        check(cond_dim >= 0, "cond_dim", f"must be ≥ 0, got {cond_dim}")
        self.event_shape = (int(event_shape[0]), int(event_shape[1]))
        self.cond_dim = int(cond_dim)
        horizon, action_dim = self.event_shape
        self.time_emb = make_time_embedding(time_embedding, time_dim, time_scale)
        self.time_mlp = nn.Identity()  # time and cond are mixed by cond_mlp below
        self.cond_mlp = nn.Sequential(
            nn.Linear(time_dim + self.cond_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model)
        )
        self.inp = nn.Linear(action_dim, d_model)
        self.pos = nn.Parameter(torch.randn(1, horizon, d_model) * 0.02)
        self.blocks = nn.ModuleList(AdaLNBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        self.out = nn.Linear(d_model, action_dim)
        for layer in (self.out_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at (x, t) given cond.

        Args:
            x: (B, H, Da) current chunk.
            t: (B,) flow time in [0, 1] (a 0-d tensor is broadcast over the batch).
            cond: (B, Dc) condition, or None when ``cond_dim == 0``.

        Returns:
            (B, H, Da) velocity.

        """
        c = self.cond_mlp(conditioning_vector(self, x, t, cond))  # (B, d_model)
        h = self.inp(x) + self.pos  # (B, H, d_model)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.out_ada(c)[:, None, :].chunk(2, dim=-1)  # (B, 1, d_model)
        return self.out(self.out_norm(h) * (1 + scale) + shift)  # (B, H, Da)
