import numpy as np
import pytest

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.stats import compute_stats, quantile_name
from lfm_policy.errors import DataError


def _buffer(episode_factory, lengths, seed=0):
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.in_memory()
    eps = [episode_factory(rng, n) for n in lengths]
    for ep in eps:
        buf.add_episode(ep)
    return buf, eps


def test_lowdim_stats_match_numpy(episode_factory):
    buf, eps = _buffer(episode_factory, [7, 30, 1, 12])
    stats = compute_stats(buf, ["action", "state"], quantiles=(0.01, 0.5, 0.99))
    for key in ("action", "state"):
        x = np.concatenate([e[key] for e in eps]).astype(np.float64)
        s = stats[key]
        np.testing.assert_allclose(s["min"], x.min(0))
        np.testing.assert_allclose(s["max"], x.max(0))
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-10)
        np.testing.assert_allclose(s["q01"], np.quantile(x, 0.01, axis=0))
        np.testing.assert_allclose(s["q50"], np.median(x, axis=0))
        np.testing.assert_allclose(s["q99"], np.quantile(x, 0.99, axis=0))
        assert s["mean"].shape == x.shape[1:] and float(s["count"]) == len(x)


def test_image_stats_are_per_channel_and_exact(episode_factory):
    buf, eps = _buffer(episode_factory, [5, 9])
    s = compute_stats(buf, ["camera"], quantiles=(0.0, 0.1, 0.9, 1.0))["camera"]
    px = np.concatenate([e["camera"] for e in eps]).reshape(-1, 3).astype(np.float64)
    assert s["mean"].shape == (3,) and float(s["count"]) == 14
    np.testing.assert_allclose(s["min"], px.min(0))
    np.testing.assert_allclose(s["max"], px.max(0))
    np.testing.assert_allclose(s["mean"], px.mean(0))
    np.testing.assert_allclose(s["std"], px.std(0))
    for q in (0.0, 0.1, 0.9, 1.0):
        np.testing.assert_allclose(s[quantile_name(q)], np.quantile(px, q, axis=0, method="inverted_cdf"))


def test_episode_subset_and_errors(episode_factory):
    buf, eps = _buffer(episode_factory, [4, 6, 8])
    s = compute_stats(buf, ["action"], episodes=[0, 2])["action"]
    x = np.concatenate([eps[0]["action"], eps[2]["action"]])
    np.testing.assert_allclose(s["max"], x.max(0))
    assert float(s["count"]) == 12
    assert set(compute_stats(buf, quantiles=())) == {"action", "camera", "state"}
    assert "q01" not in compute_stats(buf, ["action"], quantiles=())["action"]
    with pytest.raises(DataError, match="unknown key 'nope'"):
        compute_stats(buf, ["nope"])
    with pytest.raises(DataError, match="quantile 1.5"):
        compute_stats(buf, quantiles=(1.5,))
    with pytest.raises(DataError, match="no episodes"):
        compute_stats(ReplayBuffer.in_memory())


def test_quantile_names():
    names = [quantile_name(q) for q in (0.01, 0.99, 0.5, 0.995, 0.0, 1.0)]
    assert names == ["q01", "q99", "q50", "q99.5", "q00", "q100"]
