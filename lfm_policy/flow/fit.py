"""A compact block-by-block trainer for a :class:`LocalFlowChain` on an in-memory data source.

Used by the 2-D study and the tests. The policy trainer (``lfm_policy.train``) schedules blocks the
same way with checkpoints, logging and resume on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lfm_policy.config import Config, check
from lfm_policy.flow.chain import LocalFlowChain

#: ``sample_batch(batch_size, generator) -> (x (B, *event_shape), cond (B, Dc) or None)``
BatchFn = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class FitConfig(Config):
    """Optimisation settings shared by every block.

    Attributes:
        steps_per_block: Optimizer steps for each block.
        batch_size: Samples per step.
        lr: Peak AdamW learning rate (cosine decay to 0 within each block, linear warm-up).
        warmup_steps: Warm-up steps at the start of each block.
        weight_decay: AdamW weight decay.
        grad_clip: Max gradient norm (0 disables).

    """

    steps_per_block: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        check(self.steps_per_block >= 1, "steps_per_block", "must be ≥ 1")
        check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.warmup_steps >= 0, "warmup_steps", "must be ≥ 0")
        check(self.grad_clip >= 0, "grad_clip", "must be ≥ 0")


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit_chain(
    chain: LocalFlowChain,
    sample_batch: BatchFn,
    config: FitConfig,
    *,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[list[float]]:
    """Train the untrained blocks of ``chain`` one after another (resumes at ``chain.n_trained``).

    Args:
        chain: The chain to train in place.
        sample_batch: Draws a batch of data and conditions.
        config: Optimisation settings.
        seed: Seed of the batch, time and noise RNG.
        on_step: Optional ``on_step(block, step, loss)`` callback.

    Returns:
        Per block, the list of training losses.

    """
    gen = torch.Generator().manual_seed(seed)
    history: list[list[float]] = []
    for n in range(int(chain.n_trained), chain.n_blocks):
        chain.begin_block(n)
        block = chain.blocks[n]
        opt = torch.optim.AdamW(block.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, config.steps_per_block, config.warmup_steps)
        )
        losses = []
        for step in range(config.steps_per_block):
            x, cond = sample_batch(config.batch_size, gen)
            loss = chain.loss(n, x, cond, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(block.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            chain.update_ema(n)
            losses.append(loss.item())
            if on_step is not None:
                on_step(n, step, losses[-1])
        chain.finish_block(n)
        history.append(losses)
    return history
