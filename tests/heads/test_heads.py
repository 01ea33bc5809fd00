import pytest
import torch

from lfm_policy.config import ConfigError
from lfm_policy.ema import EMAConfig
from lfm_policy.flow import ChainConfig, SolverConfig
from lfm_policy.heads import DiffusionConfig, DiffusionSampler, HeadConfig, MLPConfig, NetConfig, build_head
from lfm_policy.nets.transformer import TransformerConfig
from lfm_policy.nets.unet1d import Unet1DConfig

TINY = NetConfig(unet=Unet1DConfig(down_dims=(16, 32), time_dim=16), transformer=TransformerConfig(
    d_model=32, n_layers=1, n_heads=2, time_dim=16), mlp=MLPConfig(width=32, depth=1, time_dim=16))


def trained_params(head):
    return sum(p.numel() for n, p in head.named_parameters() if "ema" not in n)


@pytest.mark.parametrize("family", ["unet", "transformer", "mlp"])
@pytest.mark.parametrize("kind", ["lfm", "fm", "diffusion", "regression"])
def test_every_head_trains_and_samples(kind, family):
    torch.manual_seed(0)
    cfg = HeadConfig(kind=kind, net=NetConfig.from_dict({**TINY.to_dict(), "family": family}),
                     chain=ChainConfig(n_blocks=3))
    head = build_head(cfg, (8, 3), 5)
    action, cond = torch.randn(6, 8, 3), torch.randn(6, 5)
    for stage in range(head.n_stages):
        head.begin_stage(stage)
        params = head.stage_parameters(stage)
        loss = head.loss(action, cond, stage=stage, weight=torch.ones(6, 8, 1))
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in params)
        head.after_step(stage)
        head.end_stage(stage)
    noise = torch.randn(6, 8, 3)
    a = head.sample(cond, noise=noise)
    assert a.shape == (6, 8, 3) and torch.isfinite(a).all()
    if kind != "diffusion" or cfg.diffusion.sampler == "ddim":  # deterministic given noise
        torch.testing.assert_close(head.sample(cond, noise=noise), a)


def test_nfe_of_each_head():
    chain = ChainConfig(n_blocks=4, sample_solver=SolverConfig(method="euler", steps=1))
    assert build_head(HeadConfig(kind="lfm", net=TINY, chain=chain), (8, 2), 4).nfe() == 4
    assert build_head(HeadConfig(kind="fm", net=TINY, chain=chain), (8, 2), 4).nfe() == 1
    assert build_head(HeadConfig(kind="lfm", net=TINY, chain=chain), (8, 2), 4).nfe(
        SolverConfig(method="midpoint", steps=2)) == 16
    assert build_head(HeadConfig(kind="diffusion", net=TINY), (8, 2), 4).nfe() == 10
    ddpm = HeadConfig(kind="diffusion", net=TINY, diffusion=DiffusionConfig(sampler="ddpm", inference_steps=None))
    assert build_head(ddpm, (8, 2), 4).nfe() == 100
    assert build_head(HeadConfig(kind="regression", net=TINY), (8, 2), 4).nfe() == 1


def test_diffusion_sampler_per_call():
    """One DDIM-10 head samples DDPM-100 or DDIM-k per call, as a head configured for them would."""
    torch.manual_seed(0)
    head = build_head(HeadConfig(kind="diffusion", net=TINY), (8, 2), 4)
    cond, noise = torch.randn(3, 4), torch.randn(3, 8, 2)
    assert head.nfe(DiffusionSampler("ddpm")) == 100 and head.nfe(DiffusionSampler("ddim", 25)) == 25
    assert head.nfe() == 10
    torch.testing.assert_close(head.sample(cond, noise=noise, solver=DiffusionSampler("ddim", 10)),
                               head.sample(cond, noise=noise))
    ddim5 = head.sample(cond, noise=noise, solver=DiffusionSampler("ddim", 5))
    assert not torch.allclose(ddim5, head.sample(cond, noise=noise))
    ddpm_cfg = HeadConfig(kind="diffusion", net=TINY, diffusion=DiffusionConfig(sampler="ddpm", inference_steps=None))
    ddpm_head = build_head(ddpm_cfg, (8, 2), 4)
    ddpm_head.load_state_dict(head.state_dict())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(head.sample(cond, noise=noise, generator=g1, solver=DiffusionSampler("ddpm")),
                               ddpm_head.sample(cond, noise=noise, generator=g2))
    with pytest.raises(TypeError, match="DiffusionSampler"):
        head.sample(cond, solver=SolverConfig(method="euler", steps=1))
    with pytest.raises(ConfigError, match="steps"):
        DiffusionSampler("ddpm", steps=10)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        head.nfe(DiffusionSampler("ddim", 500))


@pytest.mark.parametrize("family", ["unet", "transformer", "mlp"])
def test_equal_total_params_flag(family):
    net = NetConfig(family=family, unet=Unet1DConfig(down_dims=(64, 128), time_dim=16),
                    transformer=TransformerConfig(d_model=64, n_layers=2, n_heads=4, time_dim=16),
                    mlp=MLPConfig(width=128, depth=2, time_dim=16))
    fm = trained_params(build_head(HeadConfig(kind="fm", net=net), (16, 4), 8))
    lfm = trained_params(build_head(HeadConfig(kind="lfm", net=net, chain=ChainConfig(n_blocks=4)), (16, 4), 8))
    full = trained_params(build_head(HeadConfig(kind="lfm", net=net, chain=ChainConfig(n_blocks=4),
                                                equal_total_params=False), (16, 4), 8))
    assert 0.7 * fm <= lfm <= fm
    assert full == 4 * fm


def test_lfm_stage_trains_only_its_block():
    head = build_head(HeadConfig(kind="lfm", net=TINY, chain=ChainConfig(n_blocks=3)), (8, 2), 4)
    ids = {id(p) for p in head.stage_parameters(1)}
    assert ids == {id(p) for p in head.chain.blocks[1].parameters()}


def test_head_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        HeadConfig(kind="gan")
    with pytest.raises(ConfigError, match="chain.ema"):
        HeadConfig(chain=ChainConfig(ema=EMAConfig(power=0.5)))
    with pytest.raises(ConfigError, match="inference_steps"):
        DiffusionConfig(inference_steps=1000)


def test_generative_heads_keep_both_modes_and_regression_averages():
    """Bimodal chunks (+ramp or −ramp, 50/50, same condition): flows and diffusion keep both modes."""
    torch.manual_seed(0)
    ramp = torch.linspace(0.2, 1.0, 8)[None, :, None]  # (1, H, 1)
    results = {}
    for kind in ("lfm", "fm", "diffusion", "regression"):
        cfg = HeadConfig(kind=kind, net=NetConfig(family="mlp", mlp=MLPConfig(width=64, depth=2, time_dim=16)),
                         chain=ChainConfig(n_blocks=2, c=0.3), diffusion=DiffusionConfig(inference_steps=10))
        head = build_head(cfg, (8, 1), 2)
        g = torch.Generator().manual_seed(0)
        for stage in range(head.n_stages):
            head.begin_stage(stage)
            opt = torch.optim.Adam(head.stage_parameters(stage), lr=3e-3)
            for _ in range(400 // head.n_stages):
                sign = torch.randint(0, 2, (128, 1, 1), generator=g) * 2 - 1
                loss = head.loss(sign * ramp, torch.ones(128, 2), stage=stage, generator=g)
                opt.zero_grad()
                loss.backward()
                opt.step()
                head.after_step(stage)
            head.end_stage(stage)
        a = head.sample(torch.ones(200, 2), generator=torch.Generator().manual_seed(1))
        results[kind] = a[:, -1, 0]  # last action: ±1
    for kind in ("lfm", "fm", "diffusion"):
        last = results[kind]
        assert (last > 0.5).float().mean() > 0.25 and (last < -0.5).float().mean() > 0.25, kind
    assert results["regression"].abs().max() < 0.5  # the average of the two modes
