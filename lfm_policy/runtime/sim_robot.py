"""A simulated robot behind the robot interface of :class:`~lfm_policy.runtime.loop.ControlLoop`.

``SimRobot`` wraps a registered task's env: ``get_observation()`` returns the latest observation,
``send_action(a)`` steps the simulator by one control step, so driven by the loop the simulation
advances at the loop's real-time rate. The episode ends as in ``lfm-policy eval``
(:class:`~lfm_policy.eval.wrappers.MultiStepWrapper`): on ``terminated``, on ``info["is_success"]``, on
``truncated`` or after ``max_episode_steps`` steps; then ``done()`` is True and ``report()`` tells
whether it succeeded.

    robot = SimRobot("toy/point-obstacle")
    robot.reset(seed=100000)
    report = ControlLoop(policy, LoopConfig(rate_hz=10)).run(robot, seed=100000)
    report.extra["is_success"]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lfm_policy.errors import LfmPolicyError


class SimRobot:
    """A task env as a robot (see the module docstring).

    Args:
        task: Registered task name.
        images: Make the env with camera observations.
        env: An env made already (then ``task`` is only a label).
        **env_kwargs: Options of the task's env factory.

    """

    def __init__(self, task: str, *, images: bool = False, env=None, **env_kwargs: Any):
        if env is None:
            from lfm_policy.envs.registry import make_env
            from lfm_policy.envs.robomimic_compat import setup_headless_gl

            setup_headless_gl()
            env = make_env(task, images=images, **env_kwargs)
        self.task, self.env = task, env
        limit = getattr(env, "max_episode_steps", None) or (env.spec and env.spec.max_episode_steps)
        if not limit:
            raise LfmPolicyError(f"{task}: the env defines no max_episode_steps")
        self.max_episode_steps = int(limit)
        self._obs: dict[str, np.ndarray] | None = None
        self._done = True
        self._steps, self._success, self._return, self._step_s = 0, False, 0.0, []
        self._info: dict[str, Any] = {}

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode (deterministic given ``seed``); returns the first observation."""
        obs, info = self.env.reset(seed=seed)
        self._obs = {k: np.array(v) for k, v in obs.items()}
        self._done, self._steps, self._success, self._return, self._step_s = False, 0, False, 0.0, []
        self._info = dict(info)
        return self._obs

    def get_observation(self) -> dict[str, np.ndarray]:
        """The latest observation ``{key: array}`` (one frame)."""
        if self._obs is None:
            raise LfmPolicyError(f"SimRobot({self.task}): call reset() before get_observation()")
        return self._obs

    def send_action(self, action: np.ndarray) -> None:
        """Step the simulator by one control step (ignored once the episode is over)."""
        if self._done:
            return
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, np.float32))
        self._step_s.append(time.perf_counter() - t0)
        self._obs = {k: np.array(v) for k, v in obs.items()}
        self._steps += 1
        self._return += float(reward)
        self._info = dict(info)
        self._success = self._success or bool(info.get("is_success", False))
        self._done = bool(terminated or truncated or self._success or self._steps >= self.max_episode_steps)

    def done(self) -> bool:
        """Whether the episode is over."""
        return self._done

    def hold(self) -> None:
        """Stop: the simulated robot stays where it is (no more steps)."""
        self._done = True

    def report(self) -> dict[str, Any]:
        """``is_success``, ``episode_length``, ``episode_return``, ``mode`` and the mean sim step time."""
        return {"is_success": self._success, "episode_length": self._steps, "episode_return": self._return,
                "mode": self._info.get("mode"),
                "sim_step_ms": 1e3 * float(np.mean(self._step_s)) if self._step_s else None}
