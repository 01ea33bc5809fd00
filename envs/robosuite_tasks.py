"""robosuite tasks (Lift, PickPlaceCan, NutAssemblySquare) created through robomimic's env utilities.

An environment is described by robomimic env metadata (the ``env_args`` JSON of a robomimic HDF5
file: ``env_name``, ``type``, ``env_kwargs``) and created with
``robomimic.utils.env_utils.create_env_for_data_processing``, exactly as robomimic's own dataset
tools do, so a robomimic dataset's ``env_args`` can be passed as ``env_meta`` unchanged.
:func:`default_env_meta` builds the metadata of robomimic's datasets for each task: Panda,
``OSC_POSE`` (robosuite 1.4.1 defaults: 7-d delta action, 0.05 m / 0.5 rad per unit, gripper -1 open
/ +1 close) at 20 Hz, sparse reward and ``hard_reset=True`` (robosuite's default, and how robomimic's
demonstrations were made: the model is rebuilt every episode, which resamples model-level properties
such as Lift's cube size). ``hard_reset=False`` resets the simulation in place instead: the cube
keeps the size of the model built at construction, and a reset costs ~2 ms instead of ~0.6 s
(README, "Meta-World and robosuite").

Observations (``spaces.Dict``), the low-dim keys of robomimic's datasets:
    robot0_eef_pos: float32 (3,)    robot0_eef_quat: float32 (4,) (x, y, z, w)
    robot0_gripper_qpos: float32 (2,)    object: float32 (10,) Lift / (14,) Can and Square
    agentview_image, robot0_eye_in_hand_image: uint8 (S, S, 3), upright, only with ``images=True``.

robosuite renders OpenGL frames bottom-up; robomimic's wrapper flips them, so they arrive upright.
``render_settings="fast"`` (default) renders without shadows, reflections and multisampling;
``"default"`` keeps robosuite's renderer as it is, which reproduces the frames robomimic's
``dataset_states_to_obs.py`` stores (:mod:`lfm_policy.envs.mujoco_render`). ``render()`` works
without camera observations too (a separate ``mujoco.Renderer`` on the simulation).

Seeding: robosuite's model building (hard resets), placement samplers and the robot's initial joint
noise draw from numpy's (and Python's) global generators. ``reset(seed=s)`` runs the reset under
those generators seeded with ``s`` and restores their previous state afterwards, so the same task
and seed give the same initial state (cube size included) on any instance, and the caller's global
random state is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lfm_policy.envs.mujoco_render import (
    SceneRenderer,
    check_render_settings,
    install_fast_contexts,
    make_context_fast,
)
from lfm_policy.envs.robomimic_compat import import_robomimic_env_utils
from lfm_policy.envs.robosuite_meta import (  # noqa: F401  (re-exported)
    _MODEL_SEED,
    LOW_DIM_KEYS,
    ROBOSUITE_CAMERAS,
    ROBOSUITE_MAX_EPISODE_STEPS,
    ROBOSUITE_TASK_NAMES,
    EnvMetaError,
    _check_env_meta,
    _meta_image_size,
    default_env_meta,
    seeded_global_rng,
)
from lfm_policy.errors import LfmPolicyError


class RobosuiteEnv(gym.Env):
    """A robosuite task behind robomimic's ``EnvRobosuite``, as a dict-observation gymnasium env.

    Args:
        name: One of :data:`ROBOSUITE_TASK_NAMES`.
        images: Add the ``agentview_image`` and ``robot0_eye_in_hand_image`` observations.
        image_size: Side of the square camera images in pixels (default: the cameras of ``env_meta``,
            else 84).
        seed: Seeds the generator of episode seeds used by ``reset()`` without a seed.
        env_meta: robomimic env metadata to create the env from (default :func:`default_env_meta`).
        max_episode_steps: Episode limit (default from :data:`ROBOSUITE_MAX_EPISODE_STEPS`).
        terminate_on_success: End the episode (``terminated=True``) on the first successful step.
        hard_reset: Rebuild the model on every reset (True) or reset in place (False); None keeps
            ``env_meta``'s value (robosuite's default True when it has none).
        render_settings: ``"fast"`` or ``"default"`` (robosuite's own renderer, robomimic's pixels).
        cameras: With ``images``, the cameras to render (a subset of :data:`ROBOSUITE_CAMERAS`; default
            all): an image policy that reads one camera need not pay for the other.

    Attributes:
        env_meta: This env's robomimic metadata as robomimic serializes it for a dataset's ``env_args``
            (``env_name``, ``env_version``, ``type``, ``env_kwargs`` with the cameras actually used).
        robomimic_env: The robomimic ``EnvRobosuite`` (its ``.env`` is the robosuite env).

    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        name: str,
        *,
        images: bool = False,
        image_size: int | None = None,
        seed: int | None = None,
        env_meta: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
        hard_reset: bool | None = None,
        render_settings: str = "fast",
        cameras: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        if name not in ROBOSUITE_TASK_NAMES:
            raise LfmPolicyError(f"unknown robosuite task {name!r}; known: {', '.join(ROBOSUITE_TASK_NAMES)}")
        if hard_reset is not None and not isinstance(hard_reset, bool):
            raise LfmPolicyError(f"hard_reset must be true or false, got {hard_reset!r}")
        self.render_settings = check_render_settings(render_settings)
        env_meta = copy.deepcopy(env_meta) if env_meta is not None else default_env_meta(name, image_size or 84)
        _check_env_meta(name, env_meta)
        if hard_reset is not None:
            env_meta["env_kwargs"]["hard_reset"] = hard_reset
        if image_size is None:
            image_size = (_meta_image_size(env_meta["env_kwargs"]) if images else None) or 84
        if int(image_size) <= 0:
            raise LfmPolicyError(f"image_size must be positive, got {image_size}")
        self.task_name = name
        self.images = bool(images)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps or ROBOSUITE_MAX_EPISODE_STEPS[name])
        if self.max_episode_steps <= 0:
            raise LfmPolicyError(f"max_episode_steps must be positive, got {max_episode_steps}")
        self.terminate_on_success = bool(terminate_on_success)
        chosen = tuple(ROBOSUITE_CAMERAS if cameras is None else cameras)
        unknown = [c for c in chosen if c not in ROBOSUITE_CAMERAS]
        if unknown or not chosen:
            raise LfmPolicyError(f"cameras {list(chosen)}: choose a non-empty subset of {list(ROBOSUITE_CAMERAS)}")
        self.cameras = tuple(c for c in ROBOSUITE_CAMERAS if c in chosen) if self.images else ()

        env_utils = import_robomimic_env_utils()
        # robomimic prints its observation spec; library code stays quiet. Building the model draws
        # from numpy's global generator (Lift's cube size, the first placement): use a fixed seed, so
        # that every instance builds the same model, and keep the caller's global state.
        with contextlib.redirect_stdout(io.StringIO()), seeded_global_rng(_MODEL_SEED):
            self.robomimic_env = env_utils.create_env_for_data_processing(
                env_meta,
                camera_names=list(self.cameras),
                camera_height=self.image_size,
                camera_width=self.image_size,
                reward_shaping=False,
            )
        # What robomimic records as a dataset's env_args for this env (cameras and sizes included).
        self.env_meta: dict[str, Any] = copy.deepcopy(self.robomimic_env.serialize())
        self._scene_renderer: SceneRenderer | None = None
        if self.render_settings == "fast" and self.cameras:
            install_fast_contexts(self.robosuite_env)  # simulations built by later hard resets
        self._configure_renderer()

        first = self._convert(self.robomimic_env.get_observation())
        obs_spaces: dict[str, spaces.Space] = {
            k: spaces.Box(-np.inf, np.inf, first[k].shape, np.float32) for k in LOW_DIM_KEYS
        }
        for cam in self.cameras:
            obs_spaces[f"{cam}_image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = self.robosuite_env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self._steps = 0
        if seed is not None:
            self._np_random, _ = gym.utils.seeding.np_random(seed)

    # ------------------------------------------------------------------ helpers
    @property
    def robosuite_env(self) -> Any:
        """The robosuite environment (``robomimic_env.env``)."""
        return self.robomimic_env.env

    def _configure_renderer(self) -> bool:
        """Make the current offscreen render context fast (``render_settings="fast"``), once per context.

        Returns:
            Whether settings were changed (observations taken before must be re-rendered).

        """
        if not self.cameras or self.render_settings != "fast":
            return False
        return make_context_fast(self.robosuite_env.sim)

    def _make_current(self) -> None:
        """Make this env's GL context current before robosuite renders.

        robosuite renders into whichever context is current, so the frames of an env would otherwise
        go to the context of another env (or renderer) made later in the same process.
        """
        ctx = self.robosuite_env.sim._render_context_offscreen if self.cameras else None
        if ctx is not None:
            ctx.gl_ctx.make_current()

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [k for k in LOW_DIM_KEYS if k not in raw]
        missing += [f"{c}_image" for c in self.cameras if f"{c}_image" not in raw]
        if missing:
            raise LfmPolicyError(
                f"robomimic observation of {self.task_name} lacks {missing} (robomimic's ObsUtils was "
                "re-initialized without these image keys?)"
            )
        obs = {k: np.asarray(raw[k], dtype=np.float32) for k in LOW_DIM_KEYS}
        for cam in self.cameras:
            obs[f"{cam}_image"] = np.ascontiguousarray(raw[f"{cam}_image"], dtype=np.uint8)
        return obs

    def _register_image_keys(self) -> None:
        """Make sure robomimic's global ObsUtils treats our camera keys as images.

        robomimic's wrapper only flips (and keeps) image observations whose keys its module-global
        ObsUtils registry marks as ``rgb``; creating another robomimic env re-initializes that
        registry with its own cameras. Re-register ours (keeping the other keys) when they are gone.
        """
        if not self.cameras:
            return
        import robomimic.utils.obs_utils as obs_utils

        keys = [f"{c}_image" for c in self.cameras]
        known = obs_utils.OBS_KEYS_TO_MODALITIES
        if known is not None and all(known.get(k) == "rgb" for k in keys):
            return
        spec: dict[str, list[str]] = {m: list(ks) for m, ks in (obs_utils.OBS_MODALITIES_TO_KEYS or {}).items()}
        spec["rgb"] = sorted(set(spec.get("rgb", [])) | set(keys))
        for modality, modality_keys in spec.items():
            if modality != "rgb":
                spec[modality] = [k for k in modality_keys if k not in keys]
        with contextlib.redirect_stdout(io.StringIO()):
            obs_utils.initialize_obs_utils_with_obs_specs({"obs": spec})

    def _success(self) -> bool:
        return bool(self.robomimic_env.is_success()["task"])

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; the same ``seed`` always gives the same initial state.

        Returns:
            ``(obs, info)`` with ``info = {"is_success": False, "episode_seed": int}``.

        """
        super().reset(seed=seed)
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self._register_image_keys()
        self._make_current()
        with seeded_global_rng(episode_seed):
            raw = self.robomimic_env.reset()
        if self._configure_renderer():
            raw = self.robomimic_env.get_observation()
        self._steps = 0
        return self._convert(raw), {"is_success": False, "episode_seed": episode_seed}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply a float (7,) OSC_POSE action in [-1, 1] (clipped).

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``info["is_success"]`` is a bool.

        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != self.action_space.shape:
            raise LfmPolicyError(f"{self.task_name} action must have shape {self.action_space.shape}, got {a.shape}")
        a = np.clip(a, self.action_space.low, self.action_space.high)
        self._register_image_keys()
        self._make_current()
        raw, reward, _, _ = self.robomimic_env.step(a)
        self._steps += 1
        success = self._success()
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps and not terminated
        return self._convert(raw), float(reward), terminated, truncated, {"is_success": success}

    def render(self) -> np.ndarray:
        """Return the current agentview frame (uint8 (S, S, 3), upright), with or without ``images``.

        With camera observations it comes from robosuite's offscreen context (the pixels of
        ``agentview_image``); without, from a separate ``mujoco.Renderer`` with the same settings.
        """
        sim = self.robosuite_env.sim
        if self.images:
            self._configure_renderer()
            self._make_current()
            return np.ascontiguousarray(sim.render(camera_name="agentview", width=self.image_size,
                                                   height=self.image_size)[::-1])
        if self._scene_renderer is None:
            self._scene_renderer = SceneRenderer(self.image_size, self.render_settings)
        return self._scene_renderer.render(sim, "agentview")

    def close(self) -> None:
        """Free the simulator and its offscreen GL contexts."""
        if self._scene_renderer is not None:
            self._scene_renderer.close()
            self._scene_renderer = None
        rs = self.robosuite_env
        if rs is None:
            return
        ctx = rs.sim._render_context_offscreen if rs.sim is not None else None
        if ctx is not None:
            # Free the GL resources now, while EGL is alive, even if something still references the
            # context (its destructor would otherwise run at interpreter exit and print EGL errors).
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx.gl_ctx.free()
        rs.close()
        self.robomimic_env.env = None

    def env_description(self) -> dict[str, Any]:
        """The effective construction of this env (what an evaluation records; JSON-serializable)."""
        rs = self.robosuite_env
        controller = rs.robots[0].controller_config or {}
        size = {"height": self.image_size, "width": self.image_size}
        return {
            "family": "robosuite",
            "task_name": self.task_name,
            "max_episode_steps": self.max_episode_steps,
            "terminate_on_success": self.terminate_on_success,
            "render_settings": self.render_settings,
            "cameras": [{"name": cam, **size} for cam in self.cameras],
            "video_camera": {"name": "agentview", **size},
            "controller": controller.get("type"),
            "control_freq": float(rs.control_freq),
            "hard_reset": bool(rs.hard_reset),
            "env_meta": copy.deepcopy(self.env_meta),
        }

    # ------------------------------------------------------------------ robomimic HDF5 helpers
    def get_state(self) -> np.ndarray:
        """Return the flattened simulator state, float64 (S,) (robomimic HDF5 ``states`` row)."""
        return np.asarray(self.robosuite_env.sim.get_state().flatten(), dtype=np.float64)

    @property
    def model_xml(self) -> str:
        """The MuJoCo model XML of the current scene (robomimic HDF5 ``model_file`` attribute)."""
        return self.robosuite_env.sim.model.get_xml()

    def reset_to_state(self, state: np.ndarray, model_xml: str | None = None) -> dict[str, np.ndarray]:
        """Load a recorded simulator state (and scene), as robomimic's dataset tools replay ``states``.

        Args:
            state: float64 (S,), a robomimic HDF5 ``states`` row.
            model_xml: The episode's ``model_file``; the scene is rebuilt from it when given.

        Returns:
            The observation at that state (the env's keys, images included when made with them).

        """
        self._register_image_keys()
        self._make_current()
        target: dict[str, Any] = {"states": np.asarray(state, dtype=np.float64)}
        if model_xml is not None:
            target["model"] = model_xml
        with seeded_global_rng(_MODEL_SEED):  # reset_to with a model resets first (global RNG draws)
            raw = self.robomimic_env.reset_to(target)
        if self._configure_renderer():
            raw = self.robomimic_env.get_observation()
        return self._convert(raw)


def make_robosuite_env(
    name: str,
    *,
    images: bool = False,
    image_size: int | None = None,
    seed: int | None = None,
    env_meta: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    terminate_on_success: bool = True,
    hard_reset: bool | None = None,
    render_settings: str = "fast",
    cameras: tuple[str, ...] | list[str] | None = None,
) -> RobosuiteEnv:
    """Create robosuite task ``name`` from robomimic env metadata (see :class:`RobosuiteEnv`).

    Example:
        >>> env = make_robosuite_env("Lift", images=True)
        >>> obs, info = env.reset(seed=0)
        >>> obs["agentview_image"].shape, env.env_meta["env_kwargs"]["control_freq"]
        ((84, 84, 3), 20)
        >>> env.close()
        >>> fast = make_robosuite_env("Lift", hard_reset=False)  # resets in place: one cube size, ~1 ms

    """
    return RobosuiteEnv(
        name,
        images=images,
        image_size=image_size,
        seed=seed,
        env_meta=env_meta,
        max_episode_steps=max_episode_steps,
        terminate_on_success=terminate_on_success,
        hard_reset=hard_reset,
        render_settings=render_settings,
        cameras=cameras,
    )


from lfm_policy.envs.robosuite_experts import RobosuiteExpert  # noqa: E402  (re-export)

__all__ = [
    "ROBOSUITE_MAX_EPISODE_STEPS",
    "ROBOSUITE_TASK_NAMES",
    "EnvMetaError",
    "RobosuiteEnv",
    "RobosuiteExpert",
    "default_env_meta",
    "make_robosuite_env",
    "seeded_global_rng",
]
