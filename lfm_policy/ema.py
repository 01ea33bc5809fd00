"""Exponential moving average of weights with Diffusion Policy's warm-up schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lfm_policy.config import Config, check


@dataclass
class EMAConfig(Config):
    """EMA decay schedule ``1 − (1 + step / inv_gamma)^(−power)`` clamped to [min_decay, max_decay].

    Diffusion Policy uses power 0.75 and max 0.9999; with ``enabled = False`` the EMA copy simply
    follows the trained weights (decay 0).
    """

    enabled: bool = True
    power: float = 0.75
    inv_gamma: float = 1.0
    min_decay: float = 0.0
    max_decay: float = 0.9999
    update_after_step: int = 0

    def __post_init__(self) -> None:
        check(self.power > 0, "power", f"must be > 0, got {self.power}")
        check(self.inv_gamma > 0, "inv_gamma", f"must be > 0, got {self.inv_gamma}")
        check(0 <= self.min_decay <= self.max_decay < 1, "min_decay/max_decay", "need 0 ≤ min ≤ max < 1")
        check(self.update_after_step >= 0, "update_after_step", "must be ≥ 0")

    def decay(self, step: int) -> float:
        """Decay used at optimizer step ``step`` (0 before ``update_after_step`` or when disabled)."""
        if not self.enabled:
            return 0.0
        s = step - self.update_after_step - 1
        if s <= 0:
            return 0.0
        value = 1 - (1 + s / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for float parameters; buffers are copied."""
    ema_params = [p for p in ema_model.parameters()]
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("ema_update: the EMA copy and the model have different parameter lists")
    if params:
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for eb, b in zip(ema_model.buffers(), model.buffers()):
        eb.copy_(b)
