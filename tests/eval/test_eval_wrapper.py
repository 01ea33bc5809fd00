import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from lfm_policy.errors import LfmPolicyError
from lfm_policy.eval.wrappers import MultiStepWrapper


class CounterEnv(gym.Env):
    """obs["t"] = [t]; reward = action[0]; success when t reaches ``success_at``."""

    def __init__(self, success_at=None, max_episode_steps=10):
        self.observation_space = spaces.Dict({"t": spaces.Box(-1e9, 1e9, (1,), np.float32)})
        self.action_space = spaces.Box(-10, 10, (1,), np.float32)
        self.max_episode_steps = max_episode_steps
        self.success_at = success_at
        self.stepped = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0 if seed is None else seed
        return {"t": np.array([self.t], np.float32)}, {"is_success": False}

    def step(self, action):
        self.t += 1
        self.stepped += 1
        success = self.success_at is not None and self.t >= self.success_at
        return {"t": np.array([self.t], np.float32)}, float(action[0]), success, False, {"is_success": success}


def test_window_is_padded_at_reset_then_slides():
    env = MultiStepWrapper(CounterEnv(), n_obs_steps=3, n_action_steps=2)
    obs, _ = env.reset(seed=0)
    assert obs["t"].shape == (3, 1) and obs["t"].ravel().tolist() == [0, 0, 0]
    assert env.observation_space["t"].shape == (3, 1) and env.action_space.shape == (2, 1)
    obs, r, term, trunc, info = env.step(np.array([[1.0], [2.0]]))
    assert obs["t"].ravel().tolist() == [0, 1, 2] and r == 3.0 and not (term or trunc)
    obs, r, *_ = env.step(np.array([[1.0], [1.0]]))
    assert obs["t"].ravel().tolist() == [2, 3, 4] and r == 2.0
    assert info["episode_length"] == 2
    obs, _ = env.reset(seed=5)  # the window restarts with the new first observation
    assert obs["t"].ravel().tolist() == [5, 5, 5]


def test_stops_early_on_success_and_aggregates():
    inner = CounterEnv(success_at=3)
    env = MultiStepWrapper(inner, n_obs_steps=2, n_action_steps=4)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.ones((4, 1)))
    assert term and not trunc and info["is_success"] and r == 3.0 and inner.stepped == 3
    assert obs["t"].ravel().tolist() == [2, 3] and info["episode_return"] == 3.0
    # after the end, steps are no-ops that do not touch the env
    obs, r, term, trunc, info = env.step(np.ones((4, 1)))
    assert info["idle"] and r == 0.0 and inner.stepped == 3


def test_truncates_at_max_episode_steps():
    inner = CounterEnv(max_episode_steps=5)
    env = MultiStepWrapper(inner, n_obs_steps=1, n_action_steps=4)
    env.reset(seed=0)
    assert env.step(np.zeros((4, 1)))[3] is False
    _, _, term, trunc, info = env.step(np.zeros((4, 1)))
    assert trunc and not term and info["episode_length"] == 5 and inner.stepped == 5
    assert MultiStepWrapper(CounterEnv(), 1, 1, max_episode_steps=2).max_episode_steps == 2


def test_nan_action_is_an_error_naming_the_step():
    env = MultiStepWrapper(CounterEnv(), n_obs_steps=1, n_action_steps=3)
    env.reset(seed=0)
    env.step(np.zeros((3, 1)))
    with pytest.raises(LfmPolicyError, match="step 4"):
        env.step(np.array([[0.0], [np.nan], [0.0]]))


def test_catch_errors_ends_the_episode_with_the_error():
    class Boom(CounterEnv):
        def step(self, action):
            if self.t >= 2:
                raise RuntimeError("boom")
            return super().step(action)

    env = MultiStepWrapper(Boom(), n_obs_steps=1, n_action_steps=4, catch_errors=True)
    env.reset(seed=0)
    _, _, term, _, info = env.step(np.zeros((4, 1)))
    assert term and not info["is_success"] and "RuntimeError: boom" in info["error"] and info["episode_length"] == 2
    with pytest.raises(RuntimeError):
        raw = MultiStepWrapper(Boom(), n_obs_steps=1, n_action_steps=4)
        raw.reset(seed=0)
        raw.step(np.zeros((4, 1)))


def test_step_before_reset_is_idle_with_zero_window():
    env = MultiStepWrapper(CounterEnv(), n_obs_steps=2, n_action_steps=1)
    obs, r, term, trunc, info = env.step(np.zeros((1, 1)))
    assert info["idle"] and obs["t"].shape == (2, 1) and not obs["t"].any()
