"""Log-likelihood of x given cond by the change of variables through all blocks.

``log p(x | c) = log N(z; 0, I) + Σ_n ∫_0^1 div v_n(x_t, t, c) dt`` where each block is integrated
t: 0→1 (data side to noise side) and z is the end point of the last block. The divergence is exact
(one autograd pass per dimension) for small dimensions and Hutchinson's unbiased estimate
``E_ε[εᵀ (∂v/∂x) ε]`` with one fixed Rademacher ε per integration otherwise.
"""

from __future__ import annotations

import math

import torch

from lfm_policy.flow.block import FlowBlock
from lfm_policy.flow.chain import LocalFlowChain, Solvers
from lfm_policy.flow.solvers import SolverConfig, VelocityFn, integrate

#: Dimensions up to which the divergence is computed exactly when ``exact`` is left to None.
EXACT_DIVERGENCE_MAX_DIM = 32


def _augmented_fn(
    block: FlowBlock, cond: torch.Tensor | None, event_shape: tuple[int, ...], eps: torch.Tensor | None
) -> VelocityFn:
    """Velocity of the augmented state y = [x (flattened, D), log-det accumulator (1)]."""

    def f(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = y.shape[0]
        with torch.enable_grad():
            x = y[:, :-1].detach().reshape(b, *event_shape).requires_grad_(True)  # (B, D) -> (B, *event)
            v = block.velocity(x, t, cond)
            v_flat = v.reshape(b, -1)  # (B, D)
            if eps is None:
                div = torch.zeros(b, dtype=y.dtype, device=y.device)
                for i in range(v_flat.shape[1]):
                    (g,) = torch.autograd.grad(v_flat[:, i].sum(), x, retain_graph=True)
                    div = div + g.reshape(b, -1)[:, i]
            else:
                (g,) = torch.autograd.grad((v_flat * eps).sum(), x)
                div = (g.reshape(b, -1) * eps).sum(dim=1)  # (B,)
        return torch.cat([v_flat.detach(), div.detach()[:, None]], dim=1)  # (B, D + 1)

    return f


def block_log_det(
    block: FlowBlock,
    x_data_side: torch.Tensor,
    cond: torch.Tensor | None,
    solver: SolverConfig,
    *,
    exact: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Push x through one block (t: 0→1) and accumulate ∫ div v dt.

    Args:
        block: The flow block.
        x_data_side: (B, ...) points at t = 0.
        cond: (B, Dc) or None.
        solver: Integration setting.
        exact: Exact divergence, else Hutchinson with one Rademacher probe.
        generator: RNG for the probe.

    Returns:
        (x_noise_side (B, ...), integral (B,)).

    """
    b = x_data_side.shape[0]
    event_shape = tuple(x_data_side.shape[1:])
    eps = None
    if not exact:
        eps = torch.randint(0, 2, (b, math.prod(event_shape)), generator=generator, device=x_data_side.device)
        eps = eps.to(x_data_side.dtype) * 2 - 1  # Rademacher ±1, (B, D)
    y0 = torch.cat([x_data_side.reshape(b, -1), x_data_side.new_zeros(b, 1)], dim=1)  # (B, D + 1)
    y1 = integrate(_augmented_fn(block, cond, event_shape, eps), y0, 0.0, 1.0, solver)
    return y1[:, :-1].reshape(b, *event_shape), y1[:, -1]


@torch.no_grad()
def log_prob(
    chain: LocalFlowChain,
    x: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    solver: Solvers | None = None,
    exact: bool | None = None,
    n_probes: int = 1,
    use_ema: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log p(x | cond) in nats under the chain.

    Args:
        chain: Trained chain.
        x: (B, *event_shape) points.
        cond: (B, Dc) or None.
        solver: Solver(s) for the blocks (rk4 or dopri5 recommended for accuracy).
        exact: Exact divergence (default when D ≤ 32) or Hutchinson.
        n_probes: Hutchinson probes averaged (ignored when exact).
        use_ema: Use the EMA weights.
        generator: RNG for the probes.

    Returns:
        (B,) log-densities.

    """
    chain._check_batch(x, cond)
    d = math.prod(chain.event_shape)
    exact = d <= EXACT_DIVERGENCE_MAX_DIM if exact is None else exact
    blocks = chain.ema_blocks if use_ema else chain.blocks
    solvers = chain.solvers(solver)
    totals = []
    for _ in range(1 if exact else n_probes):
        z, total = x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for n in range(chain.n_blocks):
            z, delta = block_log_det(blocks[n], z, cond, solvers[n], exact=exact, generator=generator)
            total = total + delta
        totals.append(total)
    log_normal = -0.5 * (z.reshape(z.shape[0], -1) ** 2).sum(dim=1) - 0.5 * d * math.log(2 * math.pi)
    return log_normal + torch.stack(totals).mean(dim=0)
