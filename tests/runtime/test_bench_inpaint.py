import json

import numpy as np
import pytest
import torch
from runtime_helpers import tiny_policy

from lfm_policy.cli import main
from lfm_policy.errors import LfmPolicyError
from lfm_policy.runtime.bench import bench_policy, choose_solver, random_obs, solver_ladder
from lfm_policy.runtime.inpaint import guided_chunk
from lfm_policy.runtime.interface import parse_solver
from lfm_policy.runtime.joining import prefix_weights


def _chunk(policy, cond, noise, **kw):
    return policy.sample_chunk(cond, noise=noise, **kw)[0].numpy()


@pytest.mark.parametrize("kind", ["lfm", "fm"])
def test_guidance_pulls_the_prefix_and_zero_guidance_is_plain_sampling(kind):
    policy = tiny_policy(kind, n_blocks=3)
    cond = policy.encode(random_obs(policy, 1))
    g = torch.Generator().manual_seed(0)
    n1, n2 = torch.randn(1, 8, 2, generator=g), torch.randn(1, 8, 2, generator=g)
    target = _chunk(policy, cond, n1)[1:6]  # chunk steps To−1 … (To = 2)
    plain = _chunk(policy, cond, n2)
    same = guided_chunk(policy, cond, n2, target, None, guidance=0.0)[0].numpy()
    np.testing.assert_allclose(same, plain, atol=1e-5)
    guided = guided_chunk(policy, cond, n2, target, prefix_weights(5, 2))[0].numpy()
    err = lambda c: np.abs(c[1:3] - target[:2]).mean()  # noqa: E731  (the committed steps)
    assert err(guided) < 0.8 * err(plain)  # (steps capped at RMS 0.2 noise units)


def test_guidance_refuses_other_heads():
    policy = tiny_policy("diffusion")
    cond = policy.encode(random_obs(policy, 1))
    with pytest.raises(LfmPolicyError, match="flow head"):
        guided_chunk(policy, cond, torch.randn(1, 8, 2), np.zeros((3, 2)), None)


def test_bench_policy_reports_encode_sample_and_throughput():
    policy = tiny_policy("lfm", image=True)
    r = bench_policy(policy, calls=5, warmup=1, throughput_batch=4)
    for k in ("encode_ms", "sample_ms", "chunk_ms"):
        assert 0 < r[k]["p50"] <= r[k]["p95"]
    assert r["nfe"] == 4 and r["throughput"]["chunks_per_s"] > 0 and r["batch"] == 1
    with pytest.raises(LfmPolicyError, match="cuda"):
        bench_policy(policy, cuda_graph=True)


def test_budget_picks_the_most_accurate_setting_that_fits():
    policy = tiny_policy("lfm")
    ladder = [label for label, _ in solver_ladder(policy)]
    assert ladder[0] == "euler:1" and ladder[-1] == "rk4:8"
    roomy = choose_solver(policy, 1e6, calls=3, warmup=1)
    assert roomy["fits"] and roomy["label"] == "rk4:8"
    tight = choose_solver(policy, 1e-6, calls=3, warmup=1)
    assert not tight["fits"] and tight["label"] == "euler:1" and len(tight["candidates"]) == 1
    assert [label for label, _ in solver_ladder(tiny_policy("diffusion"))][:2] == ["ddim:1", "ddim:2"]


def test_parse_solver_per_head():
    assert parse_solver(tiny_policy("diffusion"), "ddim:4").steps == 4
    assert parse_solver(tiny_policy("diffusion"), "ddpm").sampler == "ddpm"
    with pytest.raises(LfmPolicyError, match="ddim"):
        parse_solver(tiny_policy("diffusion"), "midpoint:2")
    assert parse_solver(tiny_policy("lfm"), "midpoint:2").steps == 2


def test_bench_cli_compares_checkpoints_in_one_process(tmp_path, capsys):
    a = tiny_policy("lfm").save(tmp_path / "lfm")
    b = tiny_policy("diffusion").save(tmp_path / "diff")
    out = tmp_path / "bench.json"
    assert main(["bench", str(a), f"{b}@ddim:2", "--calls", "5", "--warmup", "1", "--throughput-batch", "0",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["nfe"] for r in rows] == [4, 2] and rows[1]["solver"] == "ddim:2"
    assert "÷ first" in capsys.readouterr().out
    assert main(["bench", str(a), "--calls", "3", "--warmup", "1", "--throughput-batch", "0",
                 "--budget-ms", "1000000"]) == 0
