import math

import pytest
import torch
from exact_fields import AffineField, exact_chain_fields

from lfm_policy.flow import ChainConfig, LocalFlowChain, SolverConfig, log_prob

RK4 = SolverConfig(method="rk4", steps=24)


def normal_logpdf(z):
    return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def affine_chain(mats, d):
    fields = [AffineField(a, b) for a, b in mats]
    chain = LocalFlowChain(lambda n: fields[n], (d,), ChainConfig(n_blocks=len(fields)))
    chain.finish_block(len(fields) - 1)
    return chain.double()


def affine_map(a, b, x):  # exact time-1 flow of v = A x + b
    ea = torch.linalg.matrix_exp(a)
    return x @ ea.T + torch.linalg.solve(a, (ea - torch.eye(a.shape[0], dtype=a.dtype)) @ b)


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_log_prob_of_affine_flow_matches_the_analytic_value(n_blocks):
    g = torch.Generator().manual_seed(0)
    d = 3
    mats = [(0.3 * torch.randn(d, d, generator=g, dtype=torch.float64) + 0.2 * torch.eye(d, dtype=torch.float64),
             torch.randn(d, generator=g, dtype=torch.float64)) for _ in range(n_blocks)]
    chain = affine_chain(mats, d)
    x = torch.randn(10, d, generator=g, dtype=torch.float64)
    z, logdet = x, torch.zeros(10, dtype=torch.float64)
    for a, b in mats:
        z, logdet = affine_map(a, b, z), logdet + torch.trace(a)
    expected = normal_logpdf(z) + logdet
    torch.testing.assert_close(log_prob(chain, x, None, solver=RK4, exact=True), expected, atol=1e-6, rtol=0)
    # Hutchinson: unbiased; with many probes it approaches the exact-divergence value (same solver)
    coarse = SolverConfig(method="rk4", steps=6)
    exact = log_prob(chain, x, None, solver=coarse, exact=True)
    est = log_prob(chain, x, None, solver=coarse, exact=False, n_probes=200, generator=g)
    assert (est - exact).abs().max() < 0.15
    assert (exact - expected).abs().max() < 1e-3


def test_log_prob_of_exact_gaussian_chain_is_the_data_density():
    gammas, sigma0 = (0.1, 0.2), 0.4
    fields, _ = exact_chain_fields(gammas, sigma0)
    chain = LocalFlowChain(lambda n: fields[n], (2,), ChainConfig(n_blocks=3, gammas=gammas)).double()
    chain.finish_block(2)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(20, 2, generator=g, dtype=torch.float64)
    x = cond + sigma0 * torch.randn(20, 2, generator=g, dtype=torch.float64)
    expected = normal_logpdf((x - cond) / sigma0) - 2 * math.log(sigma0)
    got = log_prob(chain, x, cond, solver=SolverConfig(method="rk4", steps=40))
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
