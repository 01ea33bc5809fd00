import pytest
import torch

from lfm_policy.config import ConfigError
from lfm_policy.nets.transformer import TransformerConfig, TransformerVelocityNet

TINY = dict(d_model=32, n_layers=2, n_heads=4, mlp_ratio=2, time_dim=16)


def perturb_zero_init(net: torch.nn.Module) -> None:
    """Give the zero-initialized gates and output layer random values (as training would)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize(
    "horizon,action_dim,cond_dim,kw",
    [(16, 7, 12, TINY), (16, 2, 0, TINY), (10, 7, 5, dict(TINY, time_embedding="fourier")),
     (1, 3, 4, dict(TINY, n_layers=1, n_heads=1, dropout=0.1))],
)
def test_shapes(horizon, action_dim, cond_dim, kw):
    net = TransformerVelocityNet((horizon, action_dim), cond_dim, **kw)
    x = torch.randn(3, horizon, action_dim)
    y = net(x, torch.rand(3), torch.randn(3, cond_dim) if cond_dim else None)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_starts_as_zero_velocity():
    net = TransformerVelocityNet((16, 7), 12, **TINY)
    y = net(torch.randn(4, 16, 7), torch.rand(4), torch.randn(4, 12))
    assert torch.equal(y, torch.zeros_like(y))


def test_output_depends_on_t_and_cond():
    torch.manual_seed(0)
    net = TransformerVelocityNet((16, 7), 12, **TINY)
    perturb_zero_init(net)
    x, c = torch.randn(4, 16, 7), torch.randn(4, 12)
    y = net(x, torch.full((4,), 0.50), c)
    assert rel_change(y, net(x, torch.full((4,), 0.51), c)) > 1e-2
    assert rel_change(y, net(x, torch.full((4,), 0.50), c + 1.0)) > 1e-2


def test_tokens_interact_and_positions_matter():
    """Attention mixes tokens (changing action 0 changes the output at action 5) and the position
    embedding breaks permutation symmetry."""
    torch.manual_seed(0)
    net = TransformerVelocityNet((8, 2), 0, **TINY)
    perturb_zero_init(net)
    x, t = torch.randn(1, 8, 2), torch.rand(1)
    x2 = x.clone()
    x2[0, 0] += 1.0
    assert (net(x, t)[0, 5] - net(x2, t)[0, 5]).abs().max() > 1e-4
    perm = torch.randperm(8)
    assert not torch.allclose(net(x, t)[:, perm], net(x[:, perm], t), atol=1e-4)


def test_samples_are_independent_in_a_batch():
    torch.manual_seed(0)
    net = TransformerVelocityNet((10, 3), 6, **TINY)
    perturb_zero_init(net)
    x, t, c = torch.randn(5, 10, 3), torch.rand(5), torch.randn(5, 6)
    torch.testing.assert_close(net(x, t, c)[2:3], net(x[2:3], t[2:3], c[2:3]), atol=1e-5, rtol=1e-5)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = TransformerVelocityNet((16, 7), 12, **TINY)
    # at initialization the zero output layer still receives a gradient
    net(torch.randn(4, 16, 7), torch.rand(4), torch.randn(4, 12)).sub(1.0).square().mean().backward()
    assert net.out.weight.grad.abs().sum() > 0
    net.zero_grad()
    perturb_zero_init(net)
    net(torch.randn(4, 16, 7), torch.rand(4), torch.randn(4, 12)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learns_a_conditional_target():
    """60 Adam steps from the zero init fit v = t * x + cond (broadcast over H)."""
    torch.manual_seed(0)
    net = TransformerVelocityNet((8, 2), 2, **TINY)
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
    net = TransformerVelocityNet((16, 7), 12, **TINY)
    with pytest.raises(ValueError, match="cond_dim=12"):
        net(torch.randn(2, 16, 7), torch.rand(2), None)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 16, 7\)"):
        net(torch.randn(2, 16, 6), torch.rand(2), torch.randn(2, 12))


@pytest.mark.parametrize("field,value", [("n_heads", 3), ("d_model", 0), ("dropout", 1.0), ("n_layers", 0),
                                         ("time_embedding", "x"), ("mlp_ratio", 0)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TransformerConfig(**{**TINY, field: value})


def test_config_round_trip_and_build(tmp_path):
    cfg = TransformerConfig(**dict(TINY, time_embedding="fourier"))
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    cfg.to_json(tmp_path / "tf.json")
    assert TransformerConfig.from_json(tmp_path / "tf.json") == cfg
    net = cfg.build((16, 2), 3)
    assert net.config == cfg and net.event_shape == (16, 2) and net.cond_dim == 3
