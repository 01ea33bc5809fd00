"""Interpolants I_t(x_data_side, x_noise_side) with t = 0 on the data side and t = 1 on the noise side."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InterpolantSample:
    """A point on the interpolation path and its time derivative.

    Attributes:
        x_t: (B, ...) I_t.
        dx_t: (B, ...) ∂_t I_t, the flow-matching regression target.
        t: (B,) times.

    """

    x_t: torch.Tensor
    dx_t: torch.Tensor
    t: torch.Tensor


class Interpolant:
    """Base class: ``I_t = a(t)·x_data_side + b(t)·x_noise_side`` with a(0)=b(1)=1, a(1)=b(0)=0."""

    name = "base"

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (a, b, da, db) at times t (same shape as t)."""
        raise NotImplementedError

    def __call__(
        self, x_data_side: torch.Tensor, x_noise_side: torch.Tensor, t: torch.Tensor
    ) -> InterpolantSample:
        """Evaluate the path.

        Args:
            x_data_side: (B, ...) endpoint at t = 0.
            x_noise_side: (B, ...) endpoint at t = 1.
            t: (B,) times in [0, 1].

        """
        if x_data_side.shape != x_noise_side.shape:
            raise ValueError(
                f"interpolant endpoints differ in shape: {tuple(x_data_side.shape)} vs "
                f"{tuple(x_noise_side.shape)}"
            )
        shape = (-1,) + (1,) * (x_data_side.dim() - 1)  # (B,) -> (B, 1, ...) for broadcasting
        a, b, da, db = (c.to(x_data_side.dtype).reshape(shape) for c in self.coefficients(t))
        return InterpolantSample(
            x_t=a * x_data_side + b * x_noise_side,
            dx_t=da * x_data_side + db * x_noise_side,
            t=t,
        )


class LinearInterpolant(Interpolant):
    """I_t = (1 − t)·x_data_side + t·x_noise_side; ∂_t I_t = x_noise_side − x_data_side."""

    name = "linear"

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1 − t, t, −1, 1)."""
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)


class TrigInterpolant(Interpolant):
    """I_t = cos(πt/2)·x_data_side + sin(πt/2)·x_noise_side."""

    name = "trig"

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(cos, sin, −π/2·sin, π/2·cos) of πt/2."""
        h = 0.5 * math.pi
        return torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)


INTERPOLANTS: dict[str, type[Interpolant]] = {"linear": LinearInterpolant, "trig": TrigInterpolant}


def make_interpolant(name: str) -> Interpolant:
    """Interpolant by name: ``"linear"`` or ``"trig"``."""
    if name not in INTERPOLANTS:
        raise ValueError(f"unknown interpolant {name!r}; choose from {sorted(INTERPOLANTS)}")
    return INTERPOLANTS[name]()
