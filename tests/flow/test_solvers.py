import math

import pytest
import torch

from lfm_policy.config import ConfigError
from lfm_policy.flow import SolverConfig, integrate, integrate_adaptive, integrate_fixed


def f(x, t):  # dx/dt = cos(t) x  =>  x(t1) = x(t0) exp(sin t1 - sin t0)
    return torch.cos(t) * x


def exact(x0, t0, t1):
    return x0 * math.exp(math.sin(t1) - math.sin(t0))


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.0)])
def test_order_of_accuracy(method, order, t0, t1):
    x0 = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    errs = []
    for steps in (8, 16, 32):
        out = integrate_fixed(f, x0, t0, t1, method=method, steps=steps)
        errs.append((out - exact(x0, t0, t1)).abs().max().item())
    observed = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(o - order) < 0.35 for o in observed), (method, observed)


def test_adaptive_solver_is_accurate_and_counts_evaluations():
    x0 = torch.tensor([[1.0]], dtype=torch.float64)
    out, nfe = integrate_adaptive(f, x0, 1.0, 0.0, rtol=1e-8, atol=1e-8)
    assert abs(out.item() - exact(1.0, 1.0, 0.0)) < 1e-6
    assert nfe > 6


def test_integrate_dispatches_on_config_and_reports_nfe():
    x0 = torch.ones(1, 1, dtype=torch.float64)
    assert SolverConfig(method="rk4", steps=3).nfe == 12
    assert SolverConfig(method="euler", steps=5).nfe == 5
    assert SolverConfig(method="dopri5").nfe is None
    a = integrate(f, x0, 0.0, 1.0, SolverConfig(method="rk4", steps=20))
    b = integrate(f, x0, 0.0, 1.0, SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8))
    assert abs(a.item() - b.item()) < 1e-6


def test_solver_config_validates():
    with pytest.raises(ConfigError, match="method"):
        SolverConfig(method="leapfrog")
    with pytest.raises(ConfigError, match="steps"):
        SolverConfig(steps=0)
