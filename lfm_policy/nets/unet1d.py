"""ConditionalUnet1D: a 1-D convolutional U-Net velocity network over an action chunk (FiLM-conditioned).

The design follows Diffusion Policy's CNN backbone: the chunk (B, H, Da) is treated as a sequence of
H steps with Da channels; residual blocks of Conv1d-GroupNorm-Mish are modulated by FiLM from the
vector ``[MLP(time embedding), cond]``; stride-2 convolutions downsample, transposed convolutions
upsample and skip connections join the two paths. Differences from the reference, on purpose:

- every skip is used (the reference leaves the finest-resolution one unused) and upsampling happens
  before the skip is joined, as in a textbook U-Net;
- FiLM scales act as ``(1 + scale)``, so a zero FiLM output is the identity;
- horizons that are not a multiple of ``2**(len(down_dims) - 1)`` are padded on the right by
  replicating the last action and the output is cropped back (H = 10 works with three levels).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from lfm_policy.config import Config, check
from lfm_policy.nets.time_features import check_time_fields, conditioning_vector, make_time_embedding


@dataclasses.dataclass
class Unet1DConfig(Config):
    """Hyperparameters of :class:`ConditionalUnet1D` (the chunk shape and Dc come from the policy).

    Attributes:
        down_dims: Channels per resolution level; ``len(down_dims) - 1`` downsamplings.
        kernel_size: Temporal kernel of the convolutions (odd).
        n_groups: GroupNorm groups; must divide every entry of ``down_dims``.
        cond_predict_scale: FiLM predicts scale and bias (True) or a bias only (False).
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (see :mod:`lfm_policy.nets.time_features`).
        time_dim: Size of the time embedding and of the time MLP's output.
        time_scale: Time stretch / Fourier frequency std; None takes the kind's default.

    """

    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    cond_predict_scale: bool = True
    time_embedding: str = "sinusoidal"
    time_dim: int = 256
    time_scale: float | None = None

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        check(len(self.down_dims) >= 1, "down_dims", "needs at least one level")
        check(all(d > 0 for d in self.down_dims), "down_dims", f"must be positive, got {self.down_dims}")
        check(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
              f"must be odd and ≥ 1, got {self.kernel_size}")
        check(self.n_groups >= 1, "n_groups", f"must be ≥ 1, got {self.n_groups}")
        check(all(d % self.n_groups == 0 for d in self.down_dims), "n_groups",
              f"{self.n_groups} must divide every entry of down_dims {self.down_dims}")
        check_time_fields(self.time_embedding, self.time_dim, self.time_scale)

    def build(self, event_shape: tuple[int, int], cond_dim: int = 0) -> ConditionalUnet1D:
        """Build the network for chunks of shape ``event_shape = (H, Da)`` and condition size Dc."""
        return ConditionalUnet1D(event_shape, cond_dim, **dataclasses.asdict(self))


class Conv1dBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish; (B, C_in, L) → (B, C_out, L)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )


class ResBlock1D(nn.Module):
    """Two conv blocks with FiLM after the first and a residual connection.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        cond_dim: Size of the FiLM conditioning vector.
        kernel_size: Temporal kernel.
        n_groups: GroupNorm groups.
        predict_scale: FiLM predicts (scale, bias) when True, else a bias only.

    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int,
                 predict_scale: bool):
        super().__init__()
        self.conv1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.predict_scale = predict_scale
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_ch * (2 if predict_scale else 1)))
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, L), c: (B, cond_dim) → (B, out_ch, L)."""
        h = self.conv1(x)
        film = self.film(c)[:, :, None]  # (B, out_ch or 2*out_ch, 1)
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = h * (1 + scale) + bias
        else:
            h = h + film
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Velocity network ``v(x, t, cond)`` over an action chunk.

    Args:
        event_shape: (H, Da), the chunk shape.
        cond_dim: Size Dc of the condition vector (0 for unconditional use; then pass cond=None).
        down_dims, kernel_size, n_groups, cond_predict_scale, time_embedding, time_dim, time_scale:
            See :class:`Unet1DConfig` (validated there).

    Attributes:
        config: The :class:`Unet1DConfig` of the hyperparameters.
        padded_horizon: H rounded up to a multiple of ``2**(len(down_dims) - 1)``.

    """

    def __init__(
        self,
        event_shape: tuple[int, int],
        cond_dim: int = 0,
        *,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
        time_embedding: str = "sinusoidal",
        time_dim: int = 256,
        time_scale: float | None = None,
    ):
        super().__init__()
        self.config = Unet1DConfig(down_dims, kernel_size, n_groups, cond_predict_scale, time_embedding,
                                   time_dim, time_scale)
        check(len(event_shape) == 2 and all(int(s) >= 1 for s in event_shape), "event_shape",
              f"must be (H, Da) with positive sizes, got {tuple(event_shape)}")
        check(cond_dim >= 0, "cond_dim", f"must be ≥ 0, got {cond_dim}")
        self.event_shape = (int(event_shape[0]), int(event_shape[1]))
        self.cond_dim = int(cond_dim)
        horizon, action_dim = self.event_shape
        dims = self.config.down_dims
        mult = 2 ** (len(dims) - 1)
        self.padded_horizon = -(-horizon // mult) * mult

        self.time_emb = make_time_embedding(time_embedding, time_dim, time_scale)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim)
        )
        film_dim = time_dim + self.cond_dim

        def res(i: int, o: int) -> ResBlock1D:
            return ResBlock1D(i, o, film_dim, kernel_size, n_groups, cond_predict_scale)

        self.down = nn.ModuleList()
        for level, d in enumerate(dims):
            d_in = action_dim if level == 0 else dims[level - 1]
            is_last = level == len(dims) - 1
            self.down.append(nn.ModuleList([
                res(d_in, d), res(d, d), nn.Identity() if is_last else nn.Conv1d(d, d, 3, stride=2, padding=1)
            ]))
        self.mid = nn.ModuleList([res(dims[-1], dims[-1]), res(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        for level in reversed(range(len(dims) - 1)):
            d_deep, d = dims[level + 1], dims[level]
            self.up.append(nn.ModuleList([
                nn.ConvTranspose1d(d_deep, d_deep, 4, stride=2, padding=1), res(d_deep + d, d), res(d, d)
            ]))
        self.final = nn.Sequential(Conv1dBlock(dims[0], dims[0], kernel_size, n_groups),
                                   nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at (x, t) given cond.

        Args:
            x: (B, H, Da) current chunk.
            t: (B,) flow time in [0, 1] (a 0-d tensor is broadcast over the batch).
            cond: (B, Dc) condition, or None when ``cond_dim == 0``.

        Returns:
            (B, H, Da) velocity.

        """
        c = conditioning_vector(self, x, t, cond)  # (B, time_dim + Dc)
        horizon = x.shape[1]
        z = x.transpose(1, 2)  # (B, Da, H)
        if self.padded_horizon != horizon:
            z = F.pad(z, (0, self.padded_horizon - horizon), mode="replicate")  # (B, Da, H')
        skips = []
        for res1, res2, downsample in self.down:
            z = res2(res1(z, c), c)
            skips.append(z)
            z = downsample(z)
        skips.pop()  # the deepest level feeds the middle blocks directly
        for blk in self.mid:
            z = blk(z, c)
        for upsample, res1, res2 in self.up:
            z = torch.cat([upsample(z), skips.pop()], dim=1)
            z = res2(res1(z, c), c)
        z = self.final(z)  # (B, Da, H')
        return z[:, :, :horizon].transpose(1, 2)

