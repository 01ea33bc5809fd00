"""Prefix inpainting for flow heads, in the spirit of real-time chunking (RTC, arXiv 2506.07339).

While the robot executes the current chunk, the next one is computed; its first steps will be executed
before it arrives (committed) and the following ones overlap the current plan. RTC generates the new
chunk so that it agrees with those planned actions, weighted by a soft mask (1 on the committed steps,
decaying over the overlap: :func:`lfm_policy.runtime.joining.prefix_weights`).

RTC guides a single flow: before every integration step it estimates the final sample with one Euler
jump, Â = x − t·v(x, t) (t = 1 noise, 0 data, as in this package), and moves x along the vector-Jacobian
product of the weighted prefix error, ∂/∂x ½ Σ W (Â − Y)². A chain of local blocks needs one change: the
jump reaches the data side of the *current* block only, so the estimate continues through the blocks
below it with the sampler's own solvers (cheap with distilled students), and the gradient flows through
them too. The step size is Polyak's, f / ‖∇f‖² per sample, scaled by ``guidance`` (1 halves the
linearised prefix error per step whatever the Jacobian's scale — no per-task β to tune), and capped at
an RMS of ``max_step`` noise units. In a chain of N > 1 blocks the data-side block (block 0) is not
guided: it stays free to bring the guided sample back onto the data. Guiding it too made closed-loop
chunks lock into erratic cycles on Meta-World pick-place (each chunk made to agree with an erratic
predecessor; success 0.78 vs 1.00 without inpainting, docs/runtime.md).

Cost: every guided step adds one jump evaluation plus the lower blocks, forward and backward, so
inpainting multiplies the latency of a distilled chain by a few times (measured in docs/runtime.md).
"""

from __future__ import annotations

import numpy as np
import torch

from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.solvers import STUDENT, SolverConfig, integrate_fixed


def _block_plan(chain, n: int, s: SolverConfig):
    """(network block, method, steps) that integrates block n with solver ``s`` (EMA weights)."""
    if s.method == STUDENT:
        return chain.ema_students[str(n)], "euler", chain.config.student(n)
    if s.adaptive:
        raise LfmPolicyError(f"prefix inpainting needs fixed-step solvers; block {n} uses {s.method}")
    return chain.ema_blocks[n], s.method, s.steps


def guided_chunk(policy, cond: torch.Tensor, noise: torch.Tensor, prefix: np.ndarray, weights: np.ndarray | None,
                 *, solver=None, guidance: float = 1.0, max_step: float = 0.2) -> torch.Tensor:
    """A chunk whose steps To−1 … To−2+P follow ``prefix``, unnormalized (B, H, Da).

    Args:
        policy: A :class:`lfm_policy.Policy` with an ``lfm`` or ``fm`` head.
        cond: (B, Dc) observation embedding.
        noise: (B, H, Da) starting noise.
        prefix: (P, Da) or (B, P, Da) unnormalized actions for chunk steps To−1 … (P ≤ H − To + 1;
            longer prefixes are cut).
        weights: (P,) mask in [0, 1] (None: all ones).
        solver: Solver(s) per block (None: the checkpoint's own).
        guidance: Scale of the Polyak step (0 turns guidance off: plain sampling).
        max_step: Cap of a step's RMS (noise units).

    """
    head = policy.head
    if policy.config.head.kind not in ("lfm", "fm"):
        raise LfmPolicyError(f"prefix inpainting needs a flow head (lfm, fm), not {policy.config.head.kind!r}")
    chain = head.chain
    start = policy.config.n_obs_steps - 1
    horizon, da = head.event_shape
    y = torch.as_tensor(np.asarray(prefix, np.float32), device=cond.device)
    if y.dim() == 2:
        y = y[None].expand(noise.shape[0], -1, -1)  # (B, P, Da)
    p = min(y.shape[1], horizon - start)
    y = policy.normalizer.normalize_key("action", y[:, :p])
    w = torch.ones(p) if weights is None else torch.as_tensor(np.asarray(weights, np.float32)[:p])
    w = w.to(cond.device)[None, :, None]  # (1, P, 1)
    solvers = head.block_solvers(solver)
    plans = [_block_plan(chain, n, s) for n, s in enumerate(solvers)]

    def estimate(x: torch.Tensor, n: int, t: torch.Tensor) -> torch.Tensor:
        """Final chunk estimate (B, H, Da) from state x at time t of block n."""
        block = plans[n][0]
        x = x - t * block.velocity(x, t, cond)  # one Euler jump to the block's data side
        for m in range(n - 1, -1, -1):
            net, method, steps = plans[m]
            x = integrate_fixed(net.velocity_fn(cond), x, 1.0, 0.0, method=method, steps=steps)
        return x

    def guide(x: torch.Tensor, n: int, t: float) -> torch.Tensor:
        if guidance <= 0 or p == 0 or (n == 0 and len(plans) > 1):  # the data-side block stays free
            return x
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            est = estimate(xg, n, torch.tensor(t, dtype=x.dtype, device=x.device))
            f = 0.5 * (w * (est[:, start : start + p] - y) ** 2).flatten(1).sum(1)  # (B,)
            (g,) = torch.autograd.grad(f.sum(), xg)
        g2 = g.flatten(1).pow(2).sum(1).clamp_min(1e-12)  # (B,)
        step = (guidance * f / g2)[:, None, None] * g
        rms = step.flatten(1).pow(2).mean(1).sqrt()[:, None, None]
        step = step * (max_step / rms.clamp_min(max_step))
        return (x - step).detach()

    x = noise
    with torch.no_grad():
        for n in range(len(plans) - 1, -1, -1):
            net, method, steps = plans[n]
            ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
            for i in range(steps):
                x = guide(x, n, float(ts[i]))
                x = integrate_fixed(net.velocity_fn(cond), x, float(ts[i]), float(ts[i + 1]), method=method, steps=1)
        if policy.config.head.clip_sample:
            x = x.clamp(-1.0, 1.0)
        return policy.normalizer.unnormalize_key("action", x)
