"""One flow-matching block: a velocity network, its loss, and transport in both directions."""

from __future__ import annotations

import torch
from torch import nn

from lfm_policy.flow.interpolants import Interpolant, make_interpolant
from lfm_policy.flow.solvers import SolverConfig, VelocityFn, integrate

TIME_SAMPLINGS = ("uniform", "logit_normal")


def weighted_mean(err: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``err`` (B, ...), or its weighted mean with ``weight`` broadcastable to it (0 = ignore)."""
    if weight is None:
        return err.mean()
    weight = weight.to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


class FlowBlock(nn.Module):
    """Velocity network ``v(x, t, cond)`` trained by flow matching between paired endpoints.

    Time convention (see :mod:`lfm_policy.flow`): t = 0 is the data side, t = 1 the noise side.
    :meth:`forward_transport` integrates 0→1 (pushforward, used to build the next block's data);
    :meth:`reverse_transport` integrates 1→0 (generation).

    Args:
        net: Module called as ``net(x (B, ...), t (B,), cond (B, Dc) | None) -> (B, ...)``.
        interpolant: ``"linear"``, ``"trig"`` or an :class:`Interpolant`.
        time_sampling: ``"uniform"`` t ~ U[0, 1] or ``"logit_normal"`` t = sigmoid(m + s·N(0, 1))
            (more weight in the middle of the path, as in rectified-flow image models).
        logit_normal: (m, s) of the logit-normal time distribution.

    """

    def __init__(
        self,
        net: nn.Module,
        interpolant: str | Interpolant = "linear",
        time_sampling: str = "uniform",
        logit_normal: tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__()
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        self.net = net
        self.interpolant = make_interpolant(interpolant) if isinstance(interpolant, str) else interpolant
        self.time_sampling = time_sampling
        self.logit_normal = logit_normal

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """v(x, t, cond); t may be 0-dim (broadcast to the batch) or (B,)."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.net(x, t, cond)

    def sample_time(self, batch: int, *, device: torch.device, generator: torch.Generator | None = None):
        """(B,) training times."""
        if self.time_sampling == "uniform":
            return torch.rand(batch, device=device, generator=generator)
        m, s = self.logit_normal
        return torch.sigmoid(m + s * torch.randn(batch, device=device, generator=generator))

    def loss(
        self,
        x_data_side: torch.Tensor,
        x_noise_side: torch.Tensor,
        cond: torch.Tensor | None,
        *,
        t: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss mean ‖v(I_t, t, cond) − ∂_t I_t‖² for paired endpoints.

        Args:
            x_data_side: (B, ...) endpoints at t = 0.
            x_noise_side: (B, ...) endpoints at t = 1 (paired with x_data_side row by row).
            cond: (B, Dc) condition of each pair, or None.
            t: (B,) times; sampled when None.
            weight: Optional weights broadcastable to (B, ...) (e.g. 0 on padded actions).
            generator: RNG for the times.

        Returns:
            Scalar loss.

        """
        if t is None:
            t = self.sample_time(x_data_side.shape[0], device=x_data_side.device, generator=generator)
        s = self.interpolant(x_data_side, x_noise_side, t)
        return weighted_mean((self.net(s.x_t, t, cond) - s.dx_t) ** 2, weight)

    def velocity_fn(self, cond: torch.Tensor | None) -> VelocityFn:
        """Bind the condition: returns ``f(x, t)`` for the solvers."""
        return lambda x, t: self.velocity(x, t, cond)

    def forward_transport(
        self, x_data_side: torch.Tensor, cond: torch.Tensor | None, solver: SolverConfig
    ) -> torch.Tensor:
        """Integrate t: 0 → 1 (data side to noise side). (B, ...) → (B, ...)."""
        return integrate(self.velocity_fn(cond), x_data_side, 0.0, 1.0, solver)

    def reverse_transport(
        self, x_noise_side: torch.Tensor, cond: torch.Tensor | None, solver: SolverConfig
    ) -> torch.Tensor:
        """Integrate t: 1 → 0 (noise side to data side). (B, ...) → (B, ...)."""
        return integrate(self.velocity_fn(cond), x_noise_side, 1.0, 0.0, solver)
