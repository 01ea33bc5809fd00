import math

import pytest
import torch
from exact_fields import ConstantDrift, exact_chain_fields
from torch import nn

from lfm_policy.config import ConfigError
from lfm_policy.flow import ChainConfig, FitConfig, FlowBlock, LocalFlowChain, SolverConfig, fit_chain
from lfm_policy.nets import ResidualMLP

RK4 = SolverConfig(method="rk4", steps=32)


def test_block_forward_then_reverse_returns_the_input():
    torch.manual_seed(0)
    net = ResidualMLP((3, 2), cond_dim=4, width=32, depth=2)
    for p in net.parameters():  # make the field non-trivial (the last layers start at zero)
        torch.nn.init.normal_(p, std=0.2)
    block = FlowBlock(net)
    x, c = torch.randn(16, 3, 2, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    block.double()
    y = block.forward_transport(x, c, RK4)
    assert (y - x).abs().max() > 0.1  # it moved
    back = block.reverse_transport(y, c, RK4)
    assert (back - x).abs().max() < 2e-5  # tolerance: RK4, 32 steps, float64, random weights


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
def test_chain_with_exact_fields_samples_the_analytic_target(interpolant):
    gammas, sigma0 = (0.1, 0.15, 0.225), 0.3
    fields, _ = exact_chain_fields(gammas, sigma0, interpolant)
    chain = LocalFlowChain(lambda n: fields[n], (2,), ChainConfig(n_blocks=4, gammas=gammas, interpolant=interpolant))
    chain.finish_block(3)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    cond = torch.tensor([[1.5, -2.0]]).repeat(n, 1)
    x = chain.sample(cond, generator=g, solver=SolverConfig(method="rk4", steps=20))
    assert x.mean(0).tolist() == pytest.approx([1.5, -2.0], abs=0.01)
    assert x.std(0).tolist() == pytest.approx([sigma0, sigma0], abs=0.01)


def test_pushforward_training_pairs_follow_the_ou_process():
    gammas, sigma0 = (0.2, 0.3), 0.5
    fields, stats = exact_chain_fields(gammas, sigma0)
    chain = LocalFlowChain(lambda n: fields[n], (1,), ChainConfig(n_blocks=3, gammas=gammas,
                                                                  push_solver=SolverConfig(method="rk4", steps=10)))
    chain.finish_block(2)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    cond = torch.full((n, 1), 2.0)
    data = cond + sigma0 * torch.randn(n, 1, generator=g)
    for b in range(3):
        x_data_side, x_noise_side = chain.training_pair(b, data, cond, generator=g)
        mu_scale, sigma = stats[b]
        assert x_data_side.mean().item() == pytest.approx(2.0 * mu_scale, abs=0.02)
        assert x_data_side.std().item() == pytest.approx(sigma, abs=0.02)
        if b < 2:  # dependent coupling: x_noise_side = e^-γ x_data_side + noise
            a = math.exp(-gammas[b])
            resid = x_noise_side - a * x_data_side
            assert resid.std().item() == pytest.approx(math.sqrt(1 - a * a), abs=0.01)
        else:  # free block: independent standard normal
            assert abs(torch.corrcoef(torch.cat([x_data_side, x_noise_side], 1).T)[0, 1].item()) < 0.02
            assert x_noise_side.std().item() == pytest.approx(1.0, abs=0.02)


def test_pushforward_keeps_each_sample_with_its_own_condition():
    chain = LocalFlowChain(lambda n: ConstantDrift(), (3,), ChainConfig(
        n_blocks=3, push_solver=SolverConfig(method="euler", steps=1)))
    chain.finish_block(2)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(64, 3, generator=g), 10 * torch.randn(64, 3, generator=g)
    x_data_side, _ = chain.training_pair(2, x, cond, generator=g)
    torch.testing.assert_close(x_data_side, x + 2 * cond)  # two blocks, each adds the row's own cond
    perm = torch.randperm(64, generator=g)
    shuffled, _ = chain.training_pair(2, x[perm], cond[perm], generator=g)
    torch.testing.assert_close(shuffled, (x + 2 * cond)[perm])  # the pairing moves with the sample
    mismatched, _ = chain.training_pair(2, x, cond[perm], generator=g)
    assert (mismatched - (x + 2 * cond)).abs().max() > 1.0  # a broken pairing would be visible


def test_nfe_is_reported_per_solver_setting():
    chain = LocalFlowChain(lambda n: ConstantDrift(), (2,), ChainConfig(n_blocks=4))
    assert chain.nfe(SolverConfig(method="rk4", steps=2)) == 32
    assert chain.nfe(SolverConfig(method="euler", steps=1)) == 4
    mixed = [SolverConfig(method="euler", steps=1)] * 3 + [SolverConfig(method="midpoint", steps=2)]
    assert chain.nfe(mixed) == 7
    assert chain.nfe(SolverConfig(method="dopri5")) is None
    with pytest.raises(ValueError, match="3 solvers"):
        chain.nfe(mixed[:3])


def test_chain_config_validates_and_round_trips(tmp_path):
    with pytest.raises(ConfigError, match="gammas"):
        ChainConfig(n_blocks=3, gammas=(0.1,))
    with pytest.raises(ConfigError, match="n_blocks"):
        ChainConfig(n_blocks=0)
    cfg = ChainConfig(n_blocks=3, gammas=(0.1, 0.2), interpolant="trig",
                      sample_solver=SolverConfig(method="rk4", steps=1))
    cfg.to_json(tmp_path / "c.json")
    assert ChainConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.schedule.gammas == (0.1, 0.2)
    with pytest.raises(ConfigError, match="n_blokcs"):
        ChainConfig.from_dict({"n_blokcs": 3})
    assert cfg.with_overrides(["sample_solver.steps=3", "interpolant=linear"]).sample_solver.steps == 3


def test_block_order_warm_start_and_resume():
    torch.manual_seed(0)
    chain = LocalFlowChain(lambda n: ResidualMLP((2,), cond_dim=1, width=16, depth=1), (2,), ChainConfig(n_blocks=3))
    with pytest.raises(RuntimeError, match="block 1"):
        chain.begin_block(1)
    with pytest.raises(RuntimeError, match="0 of 3"):
        chain.sample(torch.zeros(4, 1))

    def batch(b, g):
        c = torch.rand(b, 1, generator=g)
        return c.repeat(1, 2) + 0.1 * torch.randn(b, 2, generator=g), c

    fit_chain(chain, batch, FitConfig(steps_per_block=5, batch_size=8))
    assert int(chain.n_trained) == 3
    # warm start: block 1 started from block 0's EMA weights, so an untrained restart equals them
    chain.begin_block(1)
    for p, q in zip(chain.blocks[1].parameters(), chain.ema_blocks[0].parameters()):
        torch.testing.assert_close(p, q)
    # resume mid-chain from a state dict: only the remaining blocks train
    fresh = LocalFlowChain(lambda n: ResidualMLP((2,), cond_dim=1, width=16, depth=1), (2,), ChainConfig(n_blocks=3))
    state = {k: v for k, v in chain.state_dict().items()}
    state["n_trained"] = torch.tensor(2)
    fresh.load_state_dict(state)
    history = fit_chain(fresh, batch, FitConfig(steps_per_block=3, batch_size=8))
    assert len(history) == 1 and len(history[0]) == 3


def test_trained_chain_follows_its_condition():
    """End-to-end smoke test: a small conditional chain learns x ~ N(rotate(c), 0.05²)."""
    torch.manual_seed(0)
    chain = LocalFlowChain(lambda n: ResidualMLP((2,), cond_dim=1, width=64, depth=2), (2,),
                           ChainConfig(n_blocks=3, c=0.2, rho=1.5))

    def target(c):
        return torch.cat([torch.cos(math.pi * c), torch.sin(math.pi * c)], dim=1)

    def batch(b, g):
        c = torch.rand(b, 1, generator=g)
        return target(c) + 0.05 * torch.randn(b, 2, generator=g), c

    fit_chain(chain, batch, FitConfig(steps_per_block=300, batch_size=256, lr=3e-3))
    c = torch.linspace(0, 1, 200)[:, None]
    x = chain.sample(c, generator=torch.Generator().manual_seed(1))
    err = (x - target(c)).norm(dim=1)
    assert err.median() < 0.15, err.median()
    # conditions actually matter: samples for swapped conditions land elsewhere
    assert (x - target(c.flip(0))).norm(dim=1).median() > 0.5


def test_the_block_network_receives_each_samples_own_condition():
    """Inside ``loss`` for n > 0: the condition reaching block n's network is the one of the row it trains on.

    Earlier blocks have zero velocity (the push is the identity) and row i's data is 1000·i, so row i
    of the interpolated point still reads ≈ 1000·i whatever the noise; its condition must be i.
    """

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))
            self.seen = []

        def forward(self, x, t, cond):
            self.seen.append((x.detach(), t.detach(), cond.detach()))
            return self.p * x

    nets = []

    def make(n):
        nets.append(Recording())
        return nets[-1]

    chain = LocalFlowChain(make, (4,), ChainConfig(n_blocks=3, warm_start=False))
    for n in range(2):
        chain.begin_block(n)
        chain.finish_block(n)
    chain.begin_block(2)
    rows = torch.arange(32.0)
    x, cond = (1000 * rows)[:, None].expand(32, 4).clone(), rows[:, None].expand(32, 4).clone()
    loss = chain.loss(2, x, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    x_t, t, c = nets[2].seen[-1]
    # free block: x_t = (1 − t) x + t z, so x_t / (1000 (1 − t)) ≈ i for t not close to 1
    keep = t < 0.9
    estimate = (x_t.mean(dim=1) / (1000 * (1 - t)))[keep]
    torch.testing.assert_close(c[keep, 0], estimate.round(), atol=0, rtol=0)
