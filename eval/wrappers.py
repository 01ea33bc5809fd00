"""Multi-step control on top of a single-step environment.

:class:`MultiStepWrapper` turns an env that takes one action per step into one that takes a chunk of
Ta actions and returns the last To observations, which is what a chunked policy consumes:

* observations are ``{key: (To, ...)}``, the newest last; after ``reset`` the first observation is
  repeated To times (the padding Diffusion Policy uses);
* ``step(actions)`` with ``actions`` (Ta, Da) executes the actions one by one and stops early when the
  episode ends; rewards are summed; the episode ends on ``terminated``, on ``info["is_success"]``, on
  the env's ``truncated`` or after ``max_episode_steps`` single steps;
* after the episode ended, ``step`` is a no-op returning the final observation with
  ``info["idle"] = True`` (so a vector env with autoreset disabled can keep stepping it);
* with ``catch_errors=True``, an exception raised by the wrapped env ends the episode and is reported
  in ``info["error"]`` instead of propagating (the evaluator keeps going with the other episodes);
* episodes reset with a seed below ``options["record_below_seed"]`` keep one RGB frame per single step
  (``env.render()``, else the first ``*_image`` observation) and, per frame, whether the episode has
  succeeded by then; :meth:`pop_frames` hands them over. Other episodes never call ``render()``;
* :meth:`describe_env` reports the wrapped env's construction (:func:`lfm_policy.eval.environment.describe_env`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lfm_policy.errors import LfmPolicyError


def _stack_space(space: spaces.Box, n: int) -> spaces.Box:
    low = np.repeat(space.low[None], n, axis=0)
    high = np.repeat(space.high[None], n, axis=0)
    return spaces.Box(low, high, dtype=space.dtype)


class MultiStepWrapper(gym.Wrapper):
    """Observation window of To frames, Ta actions per step (see module docstring).

    Args:
        env: Environment with a ``spaces.Dict`` observation space of Boxes and a Box action space.
        n_obs_steps: To, observation frames returned per step.
        n_action_steps: Ta, actions taken per step (``step`` also accepts fewer).
        max_episode_steps: Single-step limit (default: ``env.max_episode_steps``).
        catch_errors: Turn exceptions of the wrapped env into ``info["error"]`` and end the episode.

    """

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int, *,
                 max_episode_steps: int | None = None, catch_errors: bool = False):
        super().__init__(env)
        if n_obs_steps < 1 or n_action_steps < 1:
            raise LfmPolicyError(f"n_obs_steps and n_action_steps must be ≥ 1, got {n_obs_steps}, {n_action_steps}")
        limit = (max_episode_steps or getattr(env, "max_episode_steps", None)
                 or (env.spec and env.spec.max_episode_steps))
        if not limit or int(limit) <= 0:
            raise LfmPolicyError(f"{type(env).__name__}: no max_episode_steps given or defined by the env")
        self.n_obs_steps, self.n_action_steps = int(n_obs_steps), int(n_action_steps)
        self.max_episode_steps = int(limit)
        self.catch_errors = catch_errors
        if not isinstance(env.observation_space, spaces.Dict):
            raise LfmPolicyError(f"{type(env).__name__}: MultiStepWrapper needs a Dict observation space")
        self.observation_space = spaces.Dict(
            {k: _stack_space(s, self.n_obs_steps) for k, s in env.observation_space.spaces.items()})
        act = env.action_space
        self.action_space = _stack_space(act, self.n_action_steps)
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)
        self._done = True
        self._steps = 0
        self._return = 0.0
        self._last_info: dict[str, Any] = {}
        self._record = False
        self._succeeded = False
        self._video: list[tuple[np.ndarray, bool]] = []
        self._finished_video: list[tuple[np.ndarray, bool]] | None = None

    # ------------------------------------------------------------------------------------------
    def _window(self) -> dict[str, np.ndarray]:
        """``{key: (To, ...)}``, newest last (zeros before the first reset)."""
        if not self._frames:
            return {k: np.zeros(sp.shape, sp.dtype) for k, sp in self.observation_space.spaces.items()}
        return {k: np.stack([f[k] for f in self._frames]) for k in self._frames[-1]}

    def _push(self, obs: dict[str, np.ndarray]) -> None:
        frame = {k: np.array(v) for k, v in obs.items()}  # copy: renderers may reuse buffers
        if not self._frames:
            self._frames.extend([frame] * self.n_obs_steps)
        else:
            self._frames.append(frame)

    def _grab_video_frame(self, obs: dict[str, np.ndarray]) -> None:
        if not self._record:
            return
        frame = None
        try:
            frame = self.env.render()
        except Exception:  # noqa: BLE001  (no renderer: fall back to a camera observation)
            frame = None
        if frame is None:
            frame = next((np.asarray(v) for k, v in obs.items() if k.endswith("_image")), None)
        if frame is not None and np.asarray(frame).ndim == 3:
            self._video.append((np.asarray(frame, dtype=np.uint8)[..., :3].copy(), self._succeeded))

    def _info(self, **extra: Any) -> dict[str, Any]:
        info = dict(self._last_info)
        info.update(is_success=bool(info.get("is_success", False)), episode_length=self._steps,
                    episode_return=self._return, **extra)
        info.setdefault("error", None)
        info.setdefault("mode", None)
        info["collision"] = bool(info.get("collision", False))
        return info

    def _end_episode(self) -> None:
        self._done = True
        if self._record:
            self._finished_video = self._video
            self._video = []

    # ------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the env; returns (``{key: (To, ...)}``, info)."""
        self._frames.clear()
        self._steps, self._return, self._done = 0, 0.0, False
        self._last_info = {}
        below = (options or {}).get("record_below_seed")
        self._record = seed is not None and below is not None and seed < below
        self._succeeded = False
        self._video = []
        try:
            obs, info = self.env.reset(seed=seed)
        except Exception as e:  # noqa: BLE001
            if not self.catch_errors:
                raise
            self._done = True
            self._last_info = {"error": f"reset(seed={seed}): {type(e).__name__}: {e}"}
            space = self.env.observation_space
            obs = {k: np.zeros(s.shape, s.dtype) for k, s in space.spaces.items()}
            self._push(obs)
            return self._window(), self._info(idle=False)
        self._last_info = dict(info)
        self._push(obs)
        self._grab_video_frame(obs)
        return self._window(), self._info(idle=False)

    def step(self, actions: np.ndarray):
        """Execute up to Ta actions (Ta', Da); returns (window, summed reward, terminated, truncated, info).

        Raises:
            LfmPolicyError: An action is not finite (NaN/inf), naming the episode step.

        """
        actions = np.asarray(actions)
        if actions.ndim == 1:
            actions = actions[None]
        if self._done:
            return self._window(), 0.0, False, False, self._info(idle=True)
        bad = ~np.isfinite(actions).all(axis=tuple(range(1, actions.ndim)))
        if bad.any():
            raise LfmPolicyError(f"non-finite action at episode step {self._steps + int(np.argmax(bad))}: "
                                 f"{actions[int(np.argmax(bad))].tolist()}")
        reward_sum, terminated, truncated = 0.0, False, False
        for action in actions:
            try:
                obs, reward, terminated, truncated, info = self.env.step(action)
            except Exception as e:  # noqa: BLE001
                if not self.catch_errors:
                    raise
                self._last_info = {"is_success": False, "error": f"step {self._steps}: {type(e).__name__}: {e}"}
                terminated = True
                break
            self._steps += 1
            reward_sum += float(reward)
            self._last_info = dict(info)
            self._push(obs)
            self._succeeded = self._succeeded or bool(info.get("is_success", False))
            self._grab_video_frame(obs)
            if info.get("is_success", False):
                terminated = True
            if not terminated and self._steps >= self.max_episode_steps:
                truncated = True
            if terminated or truncated:
                break
        self._return += reward_sum
        if terminated or truncated:
            self._end_episode()
        return self._window(), reward_sum, bool(terminated), bool(truncated and not terminated), self._info(idle=False)

    def pop_frames(self) -> list[tuple[np.ndarray, bool]] | None:
        """The last recorded episode that ended, once (else None): per frame ``(rgb, succeeded)``.

        ``rgb`` is uint8 (H, W, 3); frame 0 is the reset, frame k follows single step k; ``succeeded``
        says whether ``info["is_success"]`` was True at that step or before.
        """
        frames, self._finished_video = self._finished_video, None
        return frames

    def describe_env(self) -> dict[str, Any]:
        """The wrapped env's construction as it reports it, with this wrapper's episode limit."""
        from lfm_policy.eval.environment import describe_env

        desc = describe_env(self.env)
        desc["max_episode_steps"] = self.max_episode_steps
        return desc
