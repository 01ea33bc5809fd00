"""Detour variants: column geometry, the wrapper's collision/mode rules, the expert's sides, the registry."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from lfm_policy.envs import registry
from lfm_policy.envs.detour import DETOUR_SPECS, DetourEnv, DetourExpert, DetourSpec, Zone
from lfm_policy.envs.rollout import rollout_episode
from lfm_policy.errors import LfmPolicyError


class PointEnv(gym.Env):
    """A 2-D point at (0, 0) that must reach (1, 0); the action is its velocity (0.05 per unit)."""

    def __init__(self):
        self.observation_space = spaces.Dict({"pos": spaces.Box(-5, 5, (2,), np.float32)})
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.max_episode_steps = 200
        self.task_name = "point"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        return {"pos": self.pos.astype(np.float32)}, {"is_success": False}

    def step(self, action):
        self.pos = self.pos + 0.05 * np.clip(action, -1, 1)
        success = bool(np.linalg.norm(self.pos - [1.0, 0.0]) < 0.03)
        return {"pos": self.pos.astype(np.float32)}, 0.0, success, False, {"is_success": success}


class StraightExpert:
    """Heads straight for the target: what averaging the two sides amounts to."""

    def reset(self):
        pass

    def act(self, obs):
        return np.clip(10 * (np.array([1.0, 0.0]) - obs["pos"]), -1, 1).astype(np.float32)


SPEC = DetourSpec("custom/point", hand=lambda o: o["pos"], target=lambda o: np.array([1.0, 0.0]), fraction=0.5,
                  radius=0.1, clearance=0.05, gain=10.0, tol=0.02)  # fmt: skip


def make():
    return DetourEnv(PointEnv(), SPEC, "custom/point-detour")


def test_zone_sits_on_the_segment_and_clamps_near_the_ends():
    z = Zone.between(np.zeros(2), np.array([1.0, 0.0]), SPEC)
    np.testing.assert_allclose(z.centre, [0.5, 0.0])
    assert z.radius == 0.1 and z.inside([0.5, 0.05]) and not z.inside([0.5, 0.11])
    assert z.side([0.5, 0.2]) > 0 > z.side([0.5, -0.2])  # left of the direction is +y here
    assert z.past([0.6, 0.3]) and not z.past([0.4, 0.3])
    near = DetourSpec("x", SPEC.hand, SPEC.target, fraction=0.05, radius=0.1, clearance=0.05)
    z = Zone.between(np.zeros(2), np.array([1.0, 0.0]), near)
    assert z.centre[0] == pytest.approx(0.15)  # start stays radius + clearance away
    short = Zone.between(np.zeros(2), np.array([0.2, 0.0]), SPEC)
    assert short.radius == pytest.approx(0.2 * SPEC.max_radius_fraction)
    with pytest.raises(LfmPolicyError, match="no room"):
        Zone.between(np.zeros(2), np.zeros(2), SPEC)
    with pytest.raises(LfmPolicyError, match="fraction"):
        DetourSpec("x", SPEC.hand, SPEC.target, fraction=1.0)


def test_straight_line_collides_and_fails():
    env = make()
    ep = rollout_episode(env, StraightExpert(), 0, 200)
    assert not ep.success and ep.length < 20
    obs, info = env.reset(seed=0)
    np.testing.assert_allclose(obs["keepout"], [0.5, 0.0, 0.1])
    assert env.observation_space.contains(obs) and info["mode"] is None
    for _ in range(200):
        obs, _, terminated, truncated, info = env.step(StraightExpert().act(obs))
        if terminated:
            break
    assert info["collision"] and not info["is_success"] and terminated and not truncated


def test_expert_goes_around_on_the_side_it_drew_and_the_env_reports_it():
    env = make()
    expert = DetourExpert(env, StraightExpert())
    seen = {}
    for seed in range(12):
        ep = rollout_episode(env, expert, seed, 200)
        assert ep.success, seed
        assert ep.mode == expert.mode
        seen[seed] = ep.mode
    assert set(seen.values()) == {"left", "right"}
    again = DetourExpert(env, StraightExpert())
    assert all(rollout_episode(env, again, s, 200).mode == m for s, m in seen.items())  # seeded per episode
    left_only = DetourExpert(env, StraightExpert(), modes=["left"])
    assert {rollout_episode(env, left_only, s, 200).mode for s in range(4)} == {"left"}
    with pytest.raises(LfmPolicyError, match="unknown mode"):
        DetourExpert(env, StraightExpert(), modes=["up"])
    assert env.task_name == "point" and env.max_episode_steps == 200  # base attributes pass through
    assert env.env_description()["detour"]["radius"] == 0.1


def test_registry_lists_every_detour_spec_on_a_registered_base():
    assert set(registry.DETOUR_TASKS) == set(DETOUR_SPECS)
    for name, (base, _) in registry.DETOUR_TASKS.items():
        assert DETOUR_SPECS[name].base == base
        assert base in registry.list_tasks() and name in registry.list_tasks()
        assert registry.task_family(name) == registry.task_family(base)
    assert len(registry.DETOUR_TASKS) >= 4


def test_metaworld_detour_expert_succeeds_on_both_sides():
    task = "metaworld/reach-v3-detour"
    env = registry.make_env(task)
    try:
        for mode in ("left", "right"):
            expert = registry.make_expert(task, env, modes=[mode])
            for seed in range(2):
                ep = rollout_episode(env, expert, seed, env.max_episode_steps)
                assert ep.success and ep.mode == mode and "keepout" in ep.obs, (mode, seed)
        with pytest.raises(LfmPolicyError, match="detour env"):
            registry.make_expert(task, env.env)
    finally:
        env.close()


def test_env_from_a_detour_dataset_rebuilds_the_detour_variant():
    from pathlib import Path

    from lfm_policy.envs.robosuite_meta import default_env_meta
    from lfm_policy.eval.env_from import _from_attrs

    meta = default_env_meta("Lift", 84)
    assert _from_attrs(Path("d.zarr"), "zarr", {"task": "robosuite/Lift-detour", "env_meta": meta}, False).task == (
        "robosuite/Lift-detour")
    with pytest.raises(LfmPolicyError, match="disagrees"):
        _from_attrs(Path("d.zarr"), "zarr", {"task": "robosuite/PickPlaceCan-detour", "env_meta": meta}, False)


def test_evaluation_counts_episodes_that_end_in_the_column():
    from lfm_policy.eval.metrics import EpisodeResult, EvalResults
    from lfm_policy.eval.wrappers import MultiStepWrapper

    env = MultiStepWrapper(make(), n_obs_steps=1, n_action_steps=1, max_episode_steps=200)
    obs, info = env.reset(seed=0)
    assert info["collision"] is False
    for _ in range(200):
        obs, _, terminated, truncated, info = env.step(StraightExpert().act({"pos": obs["pos"][-1]}))
        if terminated or truncated:
            break
    assert info["collision"] is True and not info["is_success"]
    res = EvalResults(episodes=[EpisodeResult(0, 0, False, 0.0, 9, collision=True), EpisodeResult(1, 1, True, 0.0, 30)])
    assert res.summary()["n_collisions"] == 1 and res.episodes[0].to_dict()["collision"] is True
