import eval_crash_plugin  # noqa: F401  (registers test/crashy-toy and test/dying-toy)
import numpy as np
import pytest
import torch

from lfm_policy import Policy
from lfm_policy.errors import LfmPolicyError
from lfm_policy.eval.rollout import EvalConfig, Evaluator


def _spy_initial_windows(policy):
    """Record the first (padded) observation window of every episode the policy is asked about."""
    seen = []
    original = policy.predict_action_chunk

    def spy(obs, **kw):
        pos, obst = obs["agent_pos"].numpy(), obs["obstacles"].numpy()
        for b in range(pos.shape[0]):
            if np.array_equal(pos[b, 0], pos[b, 1]) and np.array_equal(obst[b, 0], obst[b, 1]):
                seen.append(tuple(np.round(np.concatenate([pos[b, 1], obst[b, 1]]), 6)))
        return original(obs, **kw)

    policy.predict_action_chunk = spy
    return seen


def _key(results):
    return [(e.index, e.seed, e.success, round(e.ret, 6), e.length, e.mode, e.error) for e in results.episodes]


def test_paired_seeds_same_initial_states_and_episodes_across_runs_and_n_envs(tiny_checkpoint):
    policy = Policy.load(tiny_checkpoint)
    seen = _spy_initial_windows(policy)
    with Evaluator(EvalConfig(task="toy/point-obstacle", n_envs=1)) as ev:
        a = ev.run(policy, episodes=5, seed_start=100000)
        first = sorted(seen)
        seen.clear()
        b = ev.run(policy, episodes=5, seed_start=100000)  # envs reused
        assert sorted(seen) == first
    seen.clear()
    with Evaluator(EvalConfig(task="toy/point-obstacle", n_envs=2)) as ev:
        c = ev.run(policy, episodes=5, seed_start=100000)
    assert sorted(seen) == first and len(set(first)) == 5
    with Evaluator(EvalConfig(task="toy/point-obstacle", n_envs=2, batch_inference=False)) as ev:
        d = ev.run(policy, episodes=5, seed_start=100000)
    assert _key(a) == _key(b) == _key(c) == _key(d)
    assert [e.seed for e in a.episodes] == list(range(100000, 100005))
    assert len(c.chunk_latency_s) == len(c.batch_sizes) > 0 and max(c.batch_sizes) == 2
    seen.clear()
    with Evaluator(EvalConfig(task="toy/point-obstacle")) as ev:  # other seeds, other initial states
        ev.run(policy, episodes=2, seed_start=7)
    assert not set(seen) & set(first)


def test_crashing_env_marks_its_episodes_and_the_run_continues(tiny_checkpoint):
    policy = Policy.load(tiny_checkpoint)
    with Evaluator(EvalConfig(task="test/crashy-toy", n_envs=2, plugins=("eval_crash_plugin",))) as ev:
        res = ev.run(policy, episodes=6, seed_start=0)
    assert [e.seed for e in res.episodes] == list(range(6))
    for e in res.episodes:
        if e.seed % 3 == 0 and e.length >= 3:
            assert "RuntimeError: simulated simulator crash" in e.error and not e.success
        else:
            assert e.error is None
    assert sum(e.error is not None for e in res.episodes) >= 1
    assert res.summary()["n_errors"] == sum(e.error is not None for e in res.episodes)


def test_dying_worker_fails_only_its_episode_and_envs_restart(tiny_checkpoint):
    policy = Policy.load(tiny_checkpoint)
    with Evaluator(EvalConfig(task="test/dying-toy", n_envs=2, plugins=("eval_crash_plugin",))) as ev:
        res = ev.run(policy, episodes=6, seed_start=0)
    with Evaluator(EvalConfig(task="toy/point-obstacle")) as ev:
        ref = ev.run(policy, episodes=6, seed_start=0)
    assert [e.seed for e in res.episodes] == list(range(6))
    for e, r in zip(res.episodes, ref.episodes):
        if e.seed % 4 == 1:  # these exit the worker process
            assert e.error.startswith("worker process died (exit code 3)") and not e.success
        else:  # the sibling's episodes restarted from their seeds: same as an undisturbed run
            assert _key(_one(e)) == _key(_one(r))


def _one(ep):
    class R:
        episodes = [ep]

    return R


def test_nan_action_raises_naming_the_step(tiny_checkpoint):
    policy = Policy.load(tiny_checkpoint)
    original = policy.predict_action_chunk
    calls = []

    def nan_on_second_call(obs, **kw):
        chunk = original(obs, **kw)
        calls.append(1)
        if len(calls) == 2:
            chunk[0, policy.config.n_obs_steps, 0] = float("nan")  # second executable action
        return chunk

    policy.predict_action_chunk = nan_on_second_call
    with Evaluator(EvalConfig(task="toy/point-obstacle")) as ev:
        with pytest.raises(LfmPolicyError, match=r"seed 100000\).*non-finite action for step 9"):
            ev.run(policy, episodes=1)


def test_keyboard_interrupt_returns_what_finished(tiny_checkpoint):
    policy = Policy.load(tiny_checkpoint)
    original = policy.predict_action_chunk
    calls = []

    def interrupt_late(obs, **kw):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return original(obs, **kw)

    policy.predict_action_chunk = interrupt_late
    with Evaluator(EvalConfig(task="toy/point-obstacle")) as ev:
        res = ev.run(policy, episodes=50)
        assert res.interrupted and 0 < len(res.episodes) < 50
        assert [e.index for e in res.episodes] == list(range(len(res.episodes)))
        policy.predict_action_chunk = original
        again = ev.run(policy, episodes=2)  # the evaluator recovers (envs recreated)
    assert not again.interrupted and len(again.episodes) == 2
    assert torch.get_num_threads() >= 1


def test_ddpm_step_noise_is_paired_across_runs_and_global_rng_state(toy_zarr_eval, tmp_path):
    """DDPM draws fresh noise at every step; it comes from the episode seeds, not from torch's global RNG."""
    from eval_helpers import tiny_train_config

    from lfm_policy.heads import DiffusionSampler
    from lfm_policy.train import train

    ckpt = train(tiny_train_config(toy_zarr_eval, tmp_path / "ddpm", **{"policy.head.kind": "diffusion"}),
                 progress=False)
    policy = Policy.load(ckpt)
    ddpm = DiffusionSampler("ddpm")
    runs = []
    with Evaluator(EvalConfig(task="toy/point-obstacle", n_envs=1)) as ev:
        for global_seed in (0, 12345):
            torch.manual_seed(global_seed)
            runs.append(ev.run(policy, episodes=3, seed_start=100000, solver=ddpm))
    assert _key(runs[0]) == _key(runs[1])
