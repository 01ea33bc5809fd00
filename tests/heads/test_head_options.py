"""Options of the LFM head found while making it strong: block budgets, exact-OU sources, action noise."""

import math

import pytest
import torch
from torch import nn

from lfm_policy import Policy, PolicySpec
from lfm_policy.config import ConfigError
from lfm_policy.flow import ChainConfig, LocalFlowChain
from lfm_policy.heads import HeadConfig, MLPConfig, NetConfig, build_head
from lfm_policy.normalizer import LinearNormalizer
from lfm_policy.policy import PolicyConfig


def test_block_params_share_the_budget_and_skip_warm_start_across_widths():
    cfg = HeadConfig(kind="lfm", net=NetConfig(family="mlp", mlp=MLPConfig(width=64, depth=2)),
                     chain=ChainConfig(n_blocks=3), block_params=(0.1, 0.2, 0.7))
    head = build_head(cfg, (8, 2), 4)
    full = sum(p.numel() for p in NetConfig(family="mlp", mlp=MLPConfig(width=64, depth=2)).build((8, 2), 4)
               .parameters())
    sizes = [sum(p.numel() for p in b.parameters()) for b in head.chain.blocks]
    for size, share in zip(sizes, (0.1, 0.2, 0.7)):
        assert 0.7 * share * full <= size <= share * full
    for n in range(3):  # blocks of different widths: no warm start, and training still runs
        head.begin_stage(n)
        head.loss(torch.randn(5, 8, 2), torch.randn(5, 4), stage=n).backward()
        head.after_step(n)
        head.end_stage(n)
    assert head.sample(torch.randn(5, 4)).shape == (5, 8, 2)
    with pytest.raises(ConfigError, match="block_params"):
        HeadConfig(kind="lfm", chain=ChainConfig(n_blocks=3), block_params=(0.5, 0.5))
    with pytest.raises(ConfigError, match="block_params"):
        HeadConfig(kind="lfm", chain=ChainConfig(n_blocks=2), block_params=(0.8, 0.8))


def test_block_steps_split_the_training_steps_by_block():
    from lfm_policy.train import TrainConfig

    cfg = TrainConfig(policy=PolicyConfig(head=HeadConfig(kind="lfm", chain=ChainConfig(n_blocks=2),
                                                          block_steps=(0.25, 0.75))), total_steps=6000)
    assert cfg.steps_for(2, [0.25, 0.75]) == [1500, 4500]
    assert cfg.steps_for(3, [1 / 3, 1 / 6, 0.5]) == [2000, 1000, 3000]  # an encoder stage keeps 1/n_stages
    assert cfg.steps_for(2) == [3000, 3000]  # default: equal
    assert cfg.with_overrides(["stage_steps=[10,20]"]).steps_for(2, [0.25, 0.75]) == [10, 20]  # explicit wins
    for shares in ((0.5, 0.6), (0.2, 0.3, 0.5), (0.0, 1.0)):
        with pytest.raises(ConfigError, match="block_steps"):
            HeadConfig(kind="lfm", chain=ChainConfig(n_blocks=2), block_steps=shares)
    HeadConfig(kind="fm", chain=ChainConfig(n_blocks=2), block_steps=(0.25, 0.75))  # one stage: ignored, valid


class MustNotRun(nn.Module):
    def forward(self, x, t, cond):
        raise AssertionError("ou_marginal sources must not push through earlier blocks")


def test_ou_marginal_sources_are_the_exact_ou_marginals_of_the_data():
    chain = LocalFlowChain(lambda n: MustNotRun(), (2,), ChainConfig(n_blocks=3, c=0.2, rho=1.5,
                                                                    source="ou_marginal"))
    for n in range(2):
        chain.finish_block(n)
    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000, 2), 2.0)
    data_side, noise_side = chain.training_pair(2, x, None, generator=g)  # the free block
    big_gamma = 0.2 + 0.3  # γ_0 + γ_1
    assert data_side.mean().item() == pytest.approx(2 * math.exp(-big_gamma), abs=0.01)
    assert data_side.std().item() == pytest.approx(math.sqrt(1 - math.exp(-2 * big_gamma)), abs=0.01)
    assert noise_side.std().item() == pytest.approx(1.0, abs=0.01)
    data_side, noise_side = chain.training_pair(1, x, None, generator=g)  # a local block: OU over γ_1 more
    a = math.exp(-0.3)
    resid = noise_side - a * data_side
    assert resid.std().item() == pytest.approx(math.sqrt(1 - a * a), abs=0.01)
    data_side, _ = chain.training_pair(0, x, None, generator=g)
    assert torch.equal(data_side, x)  # block 0 starts at the data itself


def test_action_noise_dequantizes_training_targets_only():
    seen = []
    spec = PolicySpec(obs_shapes={"s": (3,)}, action_dim=2)
    stats = {"s": {"min": -torch.ones(3), "max": torch.ones(3)}, "action": {"min": -torch.ones(2),
                                                                          "max": torch.ones(2)}}
    cfg = PolicyConfig(head=HeadConfig(kind="regression", net=NetConfig(family="mlp", mlp=MLPConfig(width=16, depth=1)),
                                       action_noise=0.1))
    policy = Policy(cfg, spec, LinearNormalizer.from_stats(stats))
    real = policy.head.loss
    policy.head.loss = lambda action, cond, **kw: (seen.append(action.clone()), real(action, cond, **kw))[1]
    batch = {"obs": {"s": torch.zeros(4096, 2, 3)}, "action": torch.zeros(4096, 16, 2),
             "action_is_pad": torch.zeros(4096, 16, dtype=torch.bool)}
    policy.train()
    policy.compute_loss(batch)
    policy.eval()
    policy.compute_loss(batch)
    assert seen[0].std().item() == pytest.approx(0.1, rel=0.02) and torch.equal(seen[1], torch.zeros_like(seen[1]))
