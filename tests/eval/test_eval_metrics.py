import pytest
from scipy.stats import binomtest

from lfm_policy.eval.metrics import EpisodeResult, EvalResults, mode_coverage, wilson_interval


@pytest.mark.parametrize("k,n,expected", [(8, 10, (0.490, 0.943)), (0, 10, (0.0, 0.278)), (50, 50, (0.929, 1.0)),
                                          (1, 2, (0.095, 0.905))])
def test_wilson_known_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-3) and hi == pytest.approx(expected[1], abs=1e-3)


def test_wilson_matches_scipy():
    for k, n in [(3, 7), (17, 50), (99, 100)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_summary_counts_and_latency():
    res = EvalResults(episodes=[EpisodeResult(i, 100 + i, i % 2 == 0, float(i), 10 * i, mode="left" if i else "right")
                                for i in range(4)], chunk_latency_s=[0.001 * i for i in range(1, 101)],
                      batch_sizes=[2] * 100, wall_s=2.0, requested=4)
    s = res.summary()
    assert s["n_success"] == 2 and s["success_rate"] == 0.5 and s["mean_length"] == 15.0 and s["mean_return"] == 1.5
    assert s["success_modes"] == {"left": 1, "right": 1}
    assert s["chunk_latency_ms"]["p50"] == pytest.approx(50.5) and s["chunk_latency_ms"]["p95"] == pytest.approx(95.05)
    assert s["episodes_per_min"] == pytest.approx(120.0)


@pytest.mark.parametrize("n", [1, 7, 50, 1000])
def test_wilson_bounds_are_exact_at_zero_and_all_successes(n):
    lo, hi = wilson_interval(0, n)
    assert lo == 0.0 and 0 < hi < 1  # exactly 0 (the formula gives ~1e-17)
    lo, hi = wilson_interval(n, n)
    assert hi == 1.0 and 0 < lo < 1
    res = EvalResults(episodes=[EpisodeResult(i, i, False, 0.0, 1) for i in range(n)])
    assert res.summary()["success_ci95"][0] == 0.0


def test_mode_coverage_counts_modes_with_a_success_and_their_balance():
    assert mode_coverage({"left": 10, "right": 10}, ["left", "right"]) == {"mode_coverage": 1.0, "mode_entropy": 1.0}
    one = mode_coverage({"left": 20}, ["left", "right"])
    assert one == {"mode_coverage": 0.5, "mode_entropy": 0.0}
    skew = mode_coverage({"left": 9, "right": 1}, ["left", "right"])
    assert skew["mode_coverage"] == 1.0 and 0.4 < skew["mode_entropy"] < 0.5  # H(0.9, 0.1) / ln 2 = 0.469
    assert mode_coverage({}, ["left", "right"]) == {"mode_coverage": 0.0, "mode_entropy": None}
    assert mode_coverage({"x": 3}, []) == {"mode_coverage": None, "mode_entropy": None}
    four = mode_coverage({"a": 5, "b": 5}, ["a", "b", "c", "d"])
    assert four["mode_coverage"] == 0.5 and four["mode_entropy"] == pytest.approx(0.5)
