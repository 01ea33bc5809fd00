import pytest
import torch

from lfm_policy.nets.embeddings import SinusoidalTimeEmbedding
from lfm_policy.nets.time_features import FourierTimeEmbedding, make_time_embedding


def rel_dist(emb, t0: float, t1: float) -> float:
    e = emb(torch.tensor([t0, t1]))
    return ((e[0] - e[1]).norm() / e[0].norm()).item()


@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
@pytest.mark.parametrize("dim", [128, 256])
def test_nearby_times_are_separated(kind, dim):
    """t = 0.50 and 0.51 must differ by more than the unscaled embedding separates t = 0 and t = 1.

    Why this threshold: the raw sinusoidal embedding (scale 1, periods up to 10^4) moves by only
    ~0.24 (relative L2) over the WHOLE interval [0, 1], so a network can hardly tell flow times apart
    with it. We require that 1 % of the interval moves the embedding by at least twice that (0.5),
    i.e. one hundredth of the time range is more visible than the whole range was before scaling.
    """
    unscaled = SinusoidalTimeEmbedding(dim, scale=1.0)
    full_range_unscaled = rel_dist(unscaled, 0.0, 1.0)
    assert full_range_unscaled < 0.3  # the premise of the threshold
    assert rel_dist(unscaled, 0.50, 0.51) < 0.01  # and the test would catch a forgotten scale
    threshold = max(0.5, 2 * full_range_unscaled)
    emb = make_time_embedding(kind, dim)
    assert rel_dist(emb, 0.50, 0.51) > threshold
    # every pair on a 1 % grid of [0, 1] is distinct, not only around 0.5
    grid = emb(torch.linspace(0, 1, 101))
    d = torch.cdist(grid, grid) / grid.norm(dim=1, keepdim=True)
    d.fill_diagonal_(float("inf"))
    assert d.min().item() > 0.3


def test_fourier_too_small_scale_is_not_separated():
    assert rel_dist(make_time_embedding("fourier", 128, scale=0.1), 0.50, 0.51) < 0.02


def test_fourier_is_deterministic_and_saved():
    a, b = FourierTimeEmbedding(64), FourierTimeEmbedding(64)
    t = torch.rand(5)
    torch.testing.assert_close(a(t), b(t))
    assert "freqs" in a.state_dict()
    c = FourierTimeEmbedding(64, seed=1)
    assert not torch.allclose(a(t), c(t))
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(t), c(t))


@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
def test_shapes_and_range(kind):
    e = make_time_embedding(kind, 32)(torch.rand(7, dtype=torch.float64))
    assert e.shape == (7, 32) and e.dtype == torch.float32
    assert e.abs().max() <= 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_embedding"):
        make_time_embedding("learned", 32)
    with pytest.raises(ValueError, match="even"):
        FourierTimeEmbedding(33)
    with pytest.raises(ValueError, match="scale"):
        FourierTimeEmbedding(32, scale=0.0)
