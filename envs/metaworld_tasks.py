"""Meta-World v3 tasks (``metaworld==3.1.1``) as dict-observation gymnasium environments.

Every one of the 50 v3 tasks is available by name (``"pick-place-v3"``, ...). The environment is the
task's own Meta-World class in the multi-task (MT1) setting: the goal position is part of the 39-d
state. Seeds select the task variation (object and goal placement) reproducibly: ``reset(seed=s)``
reseeds the environment's own generator, from which Meta-World draws the variation (its
``seeded_rand_vec`` mode), so the same task and seed always give the same initial state, on any
instance. ``reset()`` without a seed draws a fresh episode seed from the generator seeded at
construction.

Observations (``spaces.Dict``):
    state: float32 (39,) Meta-World's observation (hand, gripper, objects, previous frame, goal).
    proprio: float32 (4,) the robot's own part of it, ``state[:4]``: hand xyz and gripper opening —
        what a camera policy reads besides its image (objects and goal must then come from pixels).
    <camera>_image: uint8 (S, S, 3), only with ``images=True``; upright.

Images are rendered with a ``mujoco.Renderer``; ``render_settings="fast"`` (default) turns shadows,
reflections and multisampling off (several times faster than gymnasium's MuJoCo renderer at 84 x 84
on a CPU), ``"default"`` keeps MuJoCo's settings. ``render()`` works without camera observations
too (it renders ``camera`` only when called, e.g. for the recorded episodes of an evaluation). Meta-World's ``corner*``
cameras are mounted upside down (their up vector points to the floor); such frames are rotated by 180
degrees, which is exactly the image of the same camera rolled upright (a vertical flip alone would
mirror the scene).

The action is Meta-World's float32 (4,) in [-1, 1]: hand xyz displacement and gripper effort.
``info["is_success"]`` reports Meta-World's success flag on every step; by default the episode
terminates on success and is truncated after ``max_episode_steps`` steps.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lfm_policy.envs.mujoco_render import check_render_settings, make_scene_fast
from lfm_policy.envs.robomimic_compat import setup_headless_gl
from lfm_policy.errors import LfmPolicyError

setup_headless_gl()  # before mujoco is imported (here or by metaworld)

import mujoco  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

METAWORLD_TASK_NAMES: list[str] = list(ALL_V3_ENVIRONMENTS)
"""The 50 Meta-World v3 task names, e.g. ``"pick-place-v3"``."""

METAWORLD_MAX_EPISODE_STEPS: int = 500
"""Episode limit: Meta-World's own ``max_path_length``. Its experts need up to ~350 steps (push-back)."""

METAWORLD_CAMERAS: tuple[str, ...] = (
    "topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV",
)  # fmt: skip
"""Cameras of the Meta-World scenes."""

STATE_DIM = 39
PROPRIO_DIM = 4  # state[:4]: hand position (3) and gripper opening (1)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with dict observations, success info and seeded task variations.

    Args:
        name: Task name, one of :data:`METAWORLD_TASK_NAMES`.
        images: Add the ``<camera>_image`` observation.
        camera: Camera to render, one of :data:`METAWORLD_CAMERAS`.
        image_size: Side of the square image in pixels.
        seed: Seeds the generator of episode seeds used by ``reset()`` without a seed.
        max_episode_steps: Episode limit (default :data:`METAWORLD_MAX_EPISODE_STEPS`).
        terminate_on_success: End the episode (``terminated=True``) on the first successful step.
        render_settings: ``"fast"`` (no shadows, reflections, multisampling) or ``"default"``.

    Raises:
        LfmPolicyError: For an unknown task, camera or render setting, or a non-positive size or step limit.

    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        name: str,
        *,
        images: bool = False,
        camera: str = "corner2",
        image_size: int = 84,
        seed: int | None = None,
        max_episode_steps: int = METAWORLD_MAX_EPISODE_STEPS,
        terminate_on_success: bool = True,
        render_settings: str = "fast",
    ) -> None:
        if name not in ALL_V3_ENVIRONMENTS:
            raise LfmPolicyError(f"unknown Meta-World task {name!r}; known: {', '.join(METAWORLD_TASK_NAMES)}")
        self.render_settings = check_render_settings(render_settings)
        if camera not in METAWORLD_CAMERAS:
            raise LfmPolicyError(f"unknown Meta-World camera {camera!r}; known: {', '.join(METAWORLD_CAMERAS)}")
        if int(image_size) <= 0:
            raise LfmPolicyError(f"image_size must be positive, got {image_size}")
        if int(max_episode_steps) <= 0:
            raise LfmPolicyError(f"max_episode_steps must be positive, got {max_episode_steps}")
        self.task_name = name
        self.images = bool(images)
        self.camera = camera
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = bool(terminate_on_success)

        env = ALL_V3_ENVIRONMENTS[name]()
        # The MT1 setting (goal in the observation); variations drawn from the env's seeded generator.
        env._partially_observable = False
        del env.sawyer_observation_space  # cached_property: recomputed for the new observability
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        env.max_path_length = self.max_episode_steps
        self._mw = env

        obs_spaces: dict[str, spaces.Space] = {
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            "proprio": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
        }
        self.image_key = f"{camera}_image"
        if self.images:
            obs_spaces[self.image_key] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)

        self._renderer: mujoco.Renderer | None = None
        self._rotate_180 = False
        self._steps = 0
        self._last_image: np.ndarray | None = None
        if seed is not None:
            self._np_random, _ = gym.utils.seeding.np_random(seed)

    # ------------------------------------------------------------------ rendering
    def _render_camera(self) -> np.ndarray:
        """Return the upright uint8 (S, S, 3) frame of ``self.camera``."""
        if self._renderer is None:
            model = self._mw.model
            fast = self.render_settings == "fast"
            if fast:
                model.vis.quality.offsamples = 0  # no multisampling (read when the GL context is made)
            try:
                self._renderer = mujoco.Renderer(model, self.image_size, self.image_size)
            except mujoco.FatalError as e:
                raise LfmPolicyError(
                    f"MuJoCo cannot render ({e}); without a display set MUJOCO_GL=egl (or osmesa) before "
                    "mujoco is first imported"
                ) from None
            if fast:
                make_scene_fast(self._renderer.scene)
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera)
            # Camera frame columns: x right, y up, z backwards; an up vector pointing below the
            # horizon means the camera is mounted upside down.
            self._rotate_180 = bool(self._mw.data.cam_xmat[cam_id].reshape(3, 3)[2, 1] < 0)
        self._renderer.update_scene(self._mw.data, camera=self.camera)
        frame = self._renderer.render()
        if self._rotate_180:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def _observation(self, state: np.ndarray) -> dict[str, np.ndarray]:
        state = np.asarray(state, dtype=np.float32)
        obs = {"state": state, "proprio": state[:PROPRIO_DIM].copy()}
        if self.images:
            self._last_image = self._render_camera()
            obs[self.image_key] = self._last_image
        return obs

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; ``seed`` selects the task variation (same seed → same initial state).

        Returns:
            ``(obs, info)`` with ``info = {"is_success": False, "episode_seed": int}``.

        """
        super().reset(seed=seed)
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self._mw.seed(episode_seed)
        state, _ = self._mw.reset()
        self._steps = 0
        return self._observation(state), {"is_success": False, "episode_seed": episode_seed}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply a float (4,) action in [-1, 1] (clipped).

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``info["is_success"]`` is a bool.

        """
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape != (4,):
            raise LfmPolicyError(f"Meta-World action must have shape (4,), got {np.shape(action)}")
        state, reward, _, _, mw_info = self._mw.step(a)
        self._steps += 1
        success = bool(mw_info["success"])
        info = {"is_success": success}
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps and not terminated
        return self._observation(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """Return the current frame of ``camera`` (uint8 (S, S, 3), upright), with or without ``images``."""
        return self._render_camera()

    def env_description(self) -> dict[str, Any]:
        """The effective construction of this env (what an evaluation records; JSON-serializable)."""
        size = {"height": self.image_size, "width": self.image_size}
        return {
            "family": "metaworld",
            "task_name": self.task_name,
            "max_episode_steps": self.max_episode_steps,
            "terminate_on_success": self.terminate_on_success,
            "render_settings": self.render_settings,
            "cameras": [{"name": self.camera, **size}] if self.images else [],
            "video_camera": {"name": self.camera, **size},
        }

    def close(self) -> None:
        """Free the renderer (its GL context) and the simulator."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._mw.close()

    # ------------------------------------------------------------------ extras
    @property
    def unwrapped_metaworld(self) -> Any:
        """The underlying Meta-World ``SawyerXYZEnv`` (for its MuJoCo ``model`` and ``data``)."""
        return self._mw


def make_metaworld_env(
    name: str,
    *,
    images: bool = False,
    camera: str = "corner2",
    image_size: int = 84,
    seed: int | None = None,
    max_episode_steps: int = METAWORLD_MAX_EPISODE_STEPS,
    terminate_on_success: bool = True,
    render_settings: str = "fast",
) -> MetaWorldEnv:
    """Create Meta-World v3 task ``name`` (see :class:`MetaWorldEnv` for the arguments).

    Example:
        >>> env = make_metaworld_env("pick-place-v3", images=True)
        >>> obs, info = env.reset(seed=0)
        >>> obs["state"].shape, obs["corner2_image"].shape
        ((39,), (84, 84, 3))
        >>> env.close()

    """
    return MetaWorldEnv(
        name,
        images=images,
        camera=camera,
        image_size=image_size,
        seed=seed,
        max_episode_steps=max_episode_steps,
        terminate_on_success=terminate_on_success,
        render_settings=render_settings,
    )


class MetaWorldExpert:
    """Meta-World's scripted policy for the env's task (``metaworld.policies``).

    Args:
        env: A :class:`MetaWorldEnv` (only its task name is used).

    """

    def __init__(self, env: MetaWorldEnv) -> None:
        name = getattr(env, "task_name", None)
        if name not in ENV_POLICY_MAP:
            raise LfmPolicyError(f"no Meta-World expert for task {name!r}")
        self._policy = ENV_POLICY_MAP[name]()

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (the policies are stateless and deterministic; ``seed`` is unused)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Return the float32 (4,) action for ``obs["state"]`` (39-d), clipped to [-1, 1]."""
        state = np.asarray(obs["state"], dtype=np.float64)
        with warnings.catch_warnings():
            # The policies warn that their gains may exceed [-1, 1]; we clip as the env does.
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(state)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
