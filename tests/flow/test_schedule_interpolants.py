import math

import pytest
import torch

from lfm_policy.flow import LinearInterpolant, OUSchedule, TrigInterpolant, make_interpolant, ou_step


def test_ou_step_mean_and_variance_match_closed_form():
    g = torch.Generator().manual_seed(0)
    gamma, n = 0.3, 200_000
    x = torch.full((n, 1), 2.0)
    out = ou_step(x, gamma, torch.randn(n, 1, generator=g))
    mean, var = math.exp(-gamma) * 2.0, 1 - math.exp(-2 * gamma)
    assert abs(out.mean().item() - mean) < 4 * math.sqrt(var / n)
    assert abs(out.var().item() - var) < 4 * var * math.sqrt(2 / n)


def test_ou_steps_compose_like_one_step_of_the_summed_time():
    g = torch.Generator().manual_seed(1)
    n, x0 = 200_000, torch.full((200_000, 1), -1.5)
    two = ou_step(ou_step(x0, 0.2, torch.randn(n, 1, generator=g)), 0.5, torch.randn(n, 1, generator=g))
    mean, var = math.exp(-0.7) * -1.5, 1 - math.exp(-1.4)
    assert abs(two.mean().item() - mean) < 0.01
    assert abs(two.var().item() - var) < 0.01


def test_ou_step_validates():
    with pytest.raises(ValueError, match="gamma"):
        ou_step(torch.zeros(2, 1), 0.0, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="shape"):
        ou_step(torch.zeros(2, 1), 0.1, torch.zeros(3, 1))


def test_exponential_schedule_matches_the_paper_config():
    s = OUSchedule.exponential(4, 0.1, 1.5)
    assert s.n_blocks == 4
    assert s.gammas == pytest.approx((0.1, 0.15, 0.225))
    assert [s.is_free(n) for n in range(4)] == [False, False, False, True]
    assert s.gamma(2) == pytest.approx(0.225)
    with pytest.raises(ValueError, match="free"):
        s.gamma(3)
    assert OUSchedule.exponential(1, 0.1, 1.5).gammas == ()
    assert OUSchedule.from_list([0.2, 0.05]).n_blocks == 3


@pytest.mark.parametrize("bad", [dict(n_blocks=0, c=0.1, rho=1.5), dict(n_blocks=3, c=0.0, rho=1.5),
                                 dict(n_blocks=3, c=0.1, rho=-1.0), dict(n_blocks=2.5, c=0.1, rho=1.0)])
def test_schedule_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        OUSchedule.exponential(**bad)


def test_explicit_schedule_rejects_non_positive_gamma():
    with pytest.raises(ValueError, match=r"gammas\[1\]"):
        OUSchedule.from_list([0.1, -0.2])


@pytest.mark.parametrize("interp", [LinearInterpolant(), TrigInterpolant()])
def test_interpolant_endpoints_and_derivative(interp):
    g = torch.Generator().manual_seed(0)
    xd, xn = torch.randn(5, 3, 2, generator=g), torch.randn(5, 3, 2, generator=g)
    s0 = interp(xd, xn, torch.zeros(5))
    s1 = interp(xd, xn, torch.ones(5))
    torch.testing.assert_close(s0.x_t, xd)
    torch.testing.assert_close(s1.x_t, xn, atol=1e-6, rtol=0)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    h = 1e-6
    xd64, xn64 = xd.double(), xn.double()
    fd = (interp(xd64, xn64, t + h).x_t - interp(xd64, xn64, t - h).x_t) / (2 * h)
    torch.testing.assert_close(interp(xd64, xn64, t).dx_t, fd, atol=1e-6, rtol=1e-6)


def test_linear_interpolant_velocity_is_the_difference():
    xd, xn = torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(LinearInterpolant()(xd, xn, torch.rand(4)).dx_t, xn - xd)


def test_make_interpolant_unknown_name():
    with pytest.raises(ValueError, match="unknown interpolant"):
        make_interpolant("cubic")
