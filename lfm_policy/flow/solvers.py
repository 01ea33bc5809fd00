"""ODE solvers for velocity fields: fixed-step Euler, midpoint, Heun, RK4; adaptive dopri5 for checks.

A velocity function here is ``f(x, t) -> dx/dt`` with x a (B, ...) tensor and t a 0-dim tensor.
Integration runs in either direction (t1 < t0 integrates backwards). Fixed-step solvers are what a
policy uses at run time (known cost); the adaptive solver (torchdiffeq, imported lazily) is for
offline accuracy checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lfm_policy.config import Config, ConfigError, check

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Network evaluations per step of each fixed-step method.
EVALS_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
ADAPTIVE_METHODS = ("dopri5",)
#: Not an ODE solver: the block's distilled student (its own step count; see ``lfm_policy.flow.distill``).
STUDENT = "student"


@dataclass
class SolverConfig(Config):
    """How to integrate one block.

    Attributes:
        method: ``euler``, ``midpoint``, ``heun``, ``rk4`` (fixed step), ``dopri5`` (adaptive), or
            ``student``: the block's distilled one-step (k-step) student instead of its ODE.
        steps: Steps per block for fixed-step methods (≥ 1; a student has its own).
        rtol: Relative tolerance of the adaptive method.
        atol: Absolute tolerance of the adaptive method.

    """

    method: str = "midpoint"
    steps: int = 4
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self) -> None:
        known = [*sorted(EVALS_PER_STEP), *ADAPTIVE_METHODS, STUDENT]
        check(self.method in known, "method", f"unknown solver {self.method!r}; choose from {known}")
        check(isinstance(self.steps, int) and self.steps >= 1, "steps", f"must be an int ≥ 1, got {self.steps}")
        check(self.rtol > 0 and self.atol > 0, "rtol/atol", "must be > 0")

    @property
    def adaptive(self) -> bool:
        """Whether the step count is chosen by the solver."""
        return self.method in ADAPTIVE_METHODS

    @property
    def nfe(self) -> int | None:
        """Network evaluations to integrate one block (None for adaptive methods: data dependent).

        For ``student`` the count belongs to the block's student; :meth:`LocalFlowChain.nfe` knows it.
        """
        if self.adaptive or self.method == STUDENT:
            return None
        return self.steps * EVALS_PER_STEP[self.method]

    @classmethod
    def parse(cls, text: str) -> SolverConfig:
        """``"midpoint:2"`` → midpoint with 2 steps, ``"rk4"`` → rk4 with the default steps, ``"student"``."""
        method, _, steps = text.strip().partition(":")
        if steps and not steps.isdigit():
            raise ConfigError(f"solver {text!r}: expected METHOD or METHOD:STEPS, e.g. midpoint:2")
        return cls(method=method, steps=int(steps)) if steps else cls(method=method)


def parse_solvers(text: str) -> list[SolverConfig]:
    """One solver per block from ``"student,student,midpoint:2"`` (each entry as :meth:`SolverConfig.parse`)."""
    return [SolverConfig.parse(t) for t in text.split(",")]


def _step(f: VelocityFn, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor, method: str) -> torch.Tensor:
    """One step of size h (may be negative) from (x, t)."""
    if method == "euler":
        return x + h * f(x, t)
    if method == "midpoint":
        k1 = f(x, t)
        return x + h * f(x + 0.5 * h * k1, t + 0.5 * h)
    if method == "heun":
        k1 = f(x, t)
        k2 = f(x + h * k1, t + h)
        return x + 0.5 * h * (k1 + k2)
    if method == "rk4":
        k1 = f(x, t)
        k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = f(x + h * k3, t + h)
        return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    raise ValueError(f"unknown fixed-step method {method!r}")


def integrate_fixed(
    f: VelocityFn, x: torch.Tensor, t0: float, t1: float, *, method: str = "midpoint", steps: int = 4
) -> torch.Tensor:
    """Integrate dx/dt = f(x, t) from t0 to t1 with ``steps`` equal steps.

    Args:
        f: Velocity function.
        x: (B, ...) state at t0.
        t0: Start time.
        t1: End time (t1 < t0 integrates backwards).
        method: ``euler``, ``midpoint``, ``heun`` or ``rk4``.
        steps: Number of steps (≥ 1).

    Returns:
        (B, ...) state at t1.

    """
    if method not in EVALS_PER_STEP:
        raise ValueError(f"unknown fixed-step method {method!r}; choose from {sorted(EVALS_PER_STEP)}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    ts = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t = ts[i].to(x.dtype).to(x.device)
        h = (ts[i + 1] - ts[i]).to(x.dtype).to(x.device)
        x = _step(f, x, t, h, method)
    return x


def integrate_adaptive(
    f: VelocityFn, x: torch.Tensor, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5
) -> tuple[torch.Tensor, int]:
    """Integrate with torchdiffeq's dopri5; returns the state at t1 and the number of evaluations."""
    try:
        from torchdiffeq import odeint
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the adaptive solver needs torchdiffeq: pip install 'lfm-policy[train]'") from e
    count = [0]

    def func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return f(y, t.to(y.dtype))

    times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    out = odeint(func, x, times, method="dopri5", rtol=rtol, atol=atol)
    return out[-1], count[0]


def integrate(f: VelocityFn, x: torch.Tensor, t0: float, t1: float, solver: SolverConfig) -> torch.Tensor:
    """Integrate from t0 to t1 with the method and steps of ``solver``."""
    if solver.method == STUDENT:
        raise ValueError("method 'student' is not an ODE solver: only a chain block with a distilled student has it")
    if solver.adaptive:
        return integrate_adaptive(f, x, t0, t1, rtol=solver.rtol, atol=solver.atol)[0]
    return integrate_fixed(f, x, t0, t1, method=solver.method, steps=solver.steps)
