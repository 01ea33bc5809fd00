import pytest
import torch

from lfm_policy.config import ConfigError
from lfm_policy.nets.unet1d import ConditionalUnet1D, ResBlock1D, Unet1DConfig

TINY = dict(down_dims=(16, 32), n_groups=4, time_dim=16)


def rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize(
    "horizon,action_dim,cond_dim,kw",
    [
        (16, 7, 12, TINY),
        (16, 2, 0, TINY),
        (10, 7, 12, dict(down_dims=(16, 32, 64), n_groups=8, time_dim=16)),  # 10 -> padded to 12
        (10, 2, 5, dict(TINY, cond_predict_scale=False)),
        (7, 3, 4, dict(TINY, time_embedding="fourier", kernel_size=3)),
        (16, 7, 4, dict(down_dims=(32,), n_groups=8, time_dim=16)),  # one level, no resampling
    ],
)
def test_shapes(horizon, action_dim, cond_dim, kw):
    torch.manual_seed(0)
    net = ConditionalUnet1D((horizon, action_dim), cond_dim, **kw)
    mult = 2 ** (len(kw["down_dims"]) - 1)
    assert net.padded_horizon % mult == 0 and 0 <= net.padded_horizon - horizon < mult
    x = torch.randn(3, horizon, action_dim)
    cond = torch.randn(3, cond_dim) if cond_dim else None
    y = net(x, torch.rand(3), cond)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_output_depends_on_t_and_cond():
    torch.manual_seed(0)
    net = ConditionalUnet1D((16, 7), 12, **TINY)
    x, c = torch.randn(4, 16, 7), torch.randn(4, 12)
    y = net(x, torch.full((4,), 0.50), c)
    assert rel_change(y, net(x, torch.full((4,), 0.51), c)) > 1e-2
    assert rel_change(y, net(x, torch.full((4,), 0.50), c + 1.0)) > 1e-2


def test_cond_enters_only_through_film():
    """With every FiLM layer zeroed, cond and t have no effect; FiLM is the conditioning path."""
    torch.manual_seed(0)
    net = ConditionalUnet1D((16, 7), 12, **TINY)
    x, c = torch.randn(2, 16, 7), torch.randn(2, 12)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ResBlock1D):
                m.film[1].weight.zero_()
                m.film[1].bias.zero_()
    y = net(x, torch.full((2,), 0.2), c)
    torch.testing.assert_close(y, net(x, torch.full((2,), 0.9), -c))


def test_samples_are_independent_in_a_batch():
    """GroupNorm normalizes per sample: a sample's output does not depend on its batch mates."""
    torch.manual_seed(0)
    net = ConditionalUnet1D((10, 3), 6, **TINY)
    x, t, c = torch.randn(5, 10, 3), torch.rand(5), torch.randn(5, 6)
    full = net(x, t, c)
    torch.testing.assert_close(full[2:3], net(x[2:3], t[2:3], c[2:3]), atol=1e-5, rtol=1e-5)


def test_every_skip_joins_the_up_path_at_its_resolution():
    """Each up level gets [upsampled deeper features, the down-path output of the same level]."""
    torch.manual_seed(0)
    net = ConditionalUnet1D((16, 3), 0, down_dims=(16, 32, 64), n_groups=8, time_dim=16)
    down_out, up_in = {}, {}
    for level, (_, res2, _) in enumerate(net.down):
        res2.register_forward_hook(lambda m, i, o, level=level: down_out.__setitem__(level, o))
    for k, (_, res1, _) in enumerate(net.up):
        res1.register_forward_pre_hook(lambda m, i, k=k: up_in.__setitem__(k, i[0]))
    net(torch.randn(2, 16, 3), torch.rand(2))
    assert len(up_in) == 2
    for k, level in enumerate([1, 0]):  # up path runs from the deepest level back to the finest
        skip = down_out[level]
        assert up_in[k].shape[-1] == skip.shape[-1] == 16 // 2**level
        torch.testing.assert_close(up_in[k][:, -skip.shape[1]:], skip)


def test_scalar_t_broadcasts():
    net = ConditionalUnet1D((16, 2), 0, **TINY)
    x = torch.randn(3, 16, 2)
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((3,), 0.3)))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = ConditionalUnet1D((10, 7), 12, **dict(TINY, down_dims=(16, 32, 64), n_groups=8))
    y = net(torch.randn(4, 10, 7), torch.rand(4), torch.randn(4, 12))
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learns_a_conditional_target():
    """60 Adam steps fit v = t * x + cond (broadcast over H): conditioning is usable, not just present."""
    torch.manual_seed(0)
    net = ConditionalUnet1D((8, 2), 2, **TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss_fn():
        g = torch.Generator().manual_seed(1)
        x, t = torch.randn(64, 8, 2, generator=g), torch.rand(64, generator=g)
        c = torch.randn(64, 2, generator=g)
        return (net(x, t, c) - (t[:, None, None] * x + c[:, None, :])).square().mean()

    first = loss_fn().item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.1 * first


def test_bad_inputs_raise():
    net = ConditionalUnet1D((16, 7), 12, **TINY)
    x, t = torch.randn(2, 16, 7), torch.rand(2)
    with pytest.raises(ValueError, match="cond_dim=12"):
        net(x, t, None)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 16, 7\)"):
        net(torch.randn(2, 10, 7), t, torch.randn(2, 12))
    with pytest.raises(ValueError, match="cond must have shape"):
        net(x, t, torch.randn(2, 11))
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, torch.rand(3), torch.randn(2, 12))
    with pytest.raises(ValueError, match="cond_dim=0"):
        ConditionalUnet1D((16, 7), 0, **TINY)(x, t, torch.randn(2, 12))


@pytest.mark.parametrize(
    "field,value",
    [("n_groups", 5), ("kernel_size", 4), ("down_dims", ()), ("time_embedding", "learned"), ("time_dim", 15),
     ("time_scale", -1.0)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        Unet1DConfig(**{**TINY, field: value})


def test_config_round_trip_and_build(tmp_path):
    cfg = Unet1DConfig(down_dims=(16, 32), n_groups=4, time_embedding="fourier", time_scale=8.0, time_dim=16)
    assert Unet1DConfig.from_dict(cfg.to_dict()) == cfg
    cfg.to_json(tmp_path / "unet.json")
    assert Unet1DConfig.from_json(tmp_path / "unet.json") == cfg
    net = cfg.build((16, 7), 12)
    assert net.config == cfg and net.event_shape == (16, 7) and net.cond_dim == 12
    same = ConditionalUnet1D((16, 7), 12, down_dims=(16, 32), n_groups=4, time_embedding="fourier",
                             time_scale=8.0, time_dim=16)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in same.parameters())
    assert Unet1DConfig().with_overrides(["down_dims=[64,128]", "n_groups=8"]).down_dims == (64, 128)
