"""robomimic env metadata of the robosuite tasks, and seeding of robosuite's global random draws.

:func:`default_env_meta` builds the ``env_args`` of robomimic's datasets for each task (see
:mod:`lfm_policy.envs.robosuite_tasks`); :func:`seeded_global_rng` runs a block under seeded numpy and
Python global generators (robosuite draws placements, joint noise and, on hard resets, model-level
properties from them) and restores their state afterwards.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from lfm_policy.envs.robomimic_compat import import_robomimic_env_utils
from lfm_policy.errors import LfmPolicyError

ROBOSUITE_TASK_NAMES: tuple[str, ...] = ("Lift", "PickPlaceCan", "NutAssemblySquare")

ROBOSUITE_MAX_EPISODE_STEPS: dict[str, int] = {"Lift": 400, "PickPlaceCan": 400, "NutAssemblySquare": 400}
"""Episode limits (robomimic's / Diffusion Policy's rollout horizons for these tasks)."""

ROBOSUITE_CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
LOW_DIM_KEYS: tuple[str, ...] = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
_ROBOSUITE_ENV_TYPE = 1  # robomimic.envs.env_base.EnvType.ROBOSUITE_TYPE
_MODEL_SEED = 0  # global-RNG seed under which the model is built (same model in every instance)


class EnvMetaError(LfmPolicyError, ValueError):
    """The robomimic env metadata is malformed or names another task."""


def default_env_meta(name: str, image_size: int = 84) -> dict[str, Any]:
    """Return robomimic env metadata (``env_args``) for task ``name``, as robomimic's datasets have it.

    Args:
        name: One of :data:`ROBOSUITE_TASK_NAMES`.
        image_size: Camera height and width recorded in the metadata.

    Raises:
        LfmPolicyError: For an unknown task.

    """
    if name not in ROBOSUITE_TASK_NAMES:
        raise LfmPolicyError(f"unknown robosuite task {name!r}; known: {', '.join(ROBOSUITE_TASK_NAMES)}")
    import_robomimic_env_utils()  # headless GL before robosuite loads mujoco
    import robosuite
    from robosuite.controllers import load_controller_config

    return {
        "env_name": name,
        "env_version": robosuite.__version__,
        "type": _ROBOSUITE_ENV_TYPE,
        "env_kwargs": {
            "has_renderer": False,
            "has_offscreen_renderer": True,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": True,
            "control_freq": 20,
            "controller_configs": load_controller_config(default_controller="OSC_POSE"),
            "robots": ["Panda"],
            "camera_depths": False,
            "camera_heights": int(image_size),
            "camera_widths": int(image_size),
            "camera_names": list(ROBOSUITE_CAMERAS),
            "reward_shaping": False,
            "hard_reset": True,
        },
    }


def _check_env_meta(name: str, env_meta: dict[str, Any]) -> None:
    for key in ("env_name", "type", "env_kwargs"):
        if key not in env_meta:
            raise EnvMetaError(f"env_meta has no {key!r} key (expected robomimic env_args: env_name, type, env_kwargs)")
    if env_meta["type"] != _ROBOSUITE_ENV_TYPE:
        raise EnvMetaError(f"env_meta['type'] is {env_meta['type']!r}, not robosuite ({_ROBOSUITE_ENV_TYPE})")
    if env_meta["env_name"] != name:
        raise EnvMetaError(f"env_meta['env_name'] is {env_meta['env_name']!r} but task {name!r} was requested")
    if not isinstance(env_meta["env_kwargs"], dict):
        raise EnvMetaError("env_meta['env_kwargs'] must be a dict")


def _meta_image_size(env_kwargs: dict[str, Any]) -> int | None:
    """The square camera size recorded in robosuite env kwargs (None when absent)."""
    sizes = []
    for key in ("camera_heights", "camera_widths"):
        value = env_kwargs.get(key)
        sizes += list(value) if isinstance(value, (list, tuple)) else [value] if value is not None else []
    if not sizes:
        return None
    if len(set(sizes)) != 1 or not isinstance(sizes[0], int) or sizes[0] <= 0:
        raise EnvMetaError(f"env_meta['env_kwargs'] cameras are {env_kwargs.get('camera_heights')!r} x "
                           f"{env_kwargs.get('camera_widths')!r}; the env renders square cameras: pass image_size=")
    return sizes[0]


@contextlib.contextmanager
def seeded_global_rng(seed: int | None) -> Iterator[None]:
    """Seed numpy's and Python's global generators inside the block, then restore their state.

    With ``seed=None`` the block runs under the current global state, unchanged.
    """
    if seed is None:
        yield
        return
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
