"""Offscreen render settings of the MuJoCo tasks (robosuite, Meta-World) and robosuite frames without cameras.

Two settings (``render_settings=``):

* ``"fast"`` — shadows, reflections and multisampling off (the registered tasks' default): cheaper
  frames, but not the pixels robomimic's own tools store (README, "Meta-World and robosuite").
* ``"default"`` — the simulator's own renderer, untouched: for robosuite what robomimic's
  ``dataset_states_to_obs.py`` renders, so frames match a robomimic dataset's stored images.

robosuite builds a new simulation and render context on every hard reset (and on ``reset_to`` with a
model). :func:`install_fast_contexts` makes those contexts fast from the start, so no observation is
ever rendered with the slow settings and no context is built twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lfm_policy.errors import LfmPolicyError

RENDER_SETTINGS: tuple[str, ...] = ("fast", "default")


def check_render_settings(value: Any) -> str:
    """Return ``value`` if it names a render setting, else raise a one-line error."""
    if value not in RENDER_SETTINGS:
        raise LfmPolicyError(f"render_settings {value!r}: choose from {', '.join(RENDER_SETTINGS)}")
    return str(value)


def make_scene_fast(scene: Any) -> None:
    """Turn off shadows and reflections in a ``mujoco.MjvScene``."""
    import mujoco

    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


def make_context_fast(sim: Any) -> bool:
    """Switch an existing robosuite offscreen render context to fast settings (once).

    Multisampling is fixed when the MuJoCo render context is made, so that context is rebuilt.

    Returns:
        Whether settings changed (observations taken before must be re-rendered).

    """
    ctx = sim._render_context_offscreen
    if ctx is None or getattr(ctx, "_lfm_policy_fast", False):
        return False
    make_scene_fast(ctx.scn)
    sim.model._model.vis.quality.offsamples = 0
    ctx.gl_ctx.make_current()
    ctx.con.free()
    ctx._set_mujoco_context_and_buffers()
    ctx._lfm_policy_fast = True
    return True


def install_fast_contexts(robosuite_env: Any) -> None:
    """Give every simulation ``robosuite_env`` builds from now on a fast offscreen render context.

    Wraps the instance's ``_initialize_sim`` (which robosuite calls on hard resets and
    ``reset_from_xml_string``): the context is created right after the simulation, with
    multisampling off, before robosuite would create (and render with) a default one.
    """
    if getattr(robosuite_env, "_lfm_policy_fast_hook", False) or not robosuite_env.has_offscreen_renderer:
        return
    from robosuite.utils.binding_utils import MjRenderContextOffscreen

    original = robosuite_env._initialize_sim

    def initialize_sim(xml_string: str | None = None) -> None:
        original(xml_string)
        sim = robosuite_env.sim
        sim.model._model.vis.quality.offsamples = 0
        ctx = MjRenderContextOffscreen(sim, device_id=robosuite_env.render_gpu_device_id)  # registers itself
        make_scene_fast(ctx.scn)
        ctx._lfm_policy_fast = True

    robosuite_env._initialize_sim = initialize_sim
    robosuite_env._lfm_policy_fast_hook = True


class SceneRenderer:
    """A ``mujoco.Renderer`` on a robosuite simulation, for ``render()`` of an env without cameras.

    Rebuilt whenever the simulation's model changes (hard resets make a new one). Shows visual
    meshes only, as robosuite's renderer does.

    Args:
        size: Frame side in pixels.
        render_settings: ``"fast"`` or ``"default"`` (see the module docstring).

    """

    def __init__(self, size: int, render_settings: str):
        self.size, self.render_settings = int(size), check_render_settings(render_settings)
        self._renderer: Any = None
        self._model: Any = None
        self._option: Any = None

    def render(self, sim: Any, camera: str) -> np.ndarray:
        """Return camera ``camera``'s upright frame, uint8 (size, size, 3)."""
        import mujoco

        model = sim.model._model
        if self._renderer is None or self._model is not model:
            self.close()
            if self.render_settings == "fast":
                model.vis.quality.offsamples = 0
            try:
                self._renderer = mujoco.Renderer(model, self.size, self.size)
            except mujoco.FatalError as e:
                raise LfmPolicyError(f"MuJoCo cannot render ({e}); without a display set MUJOCO_GL=egl") from None
            if self.render_settings == "fast":
                make_scene_fast(self._renderer.scene)
            self._model = model
            self._option = mujoco.MjvOption()
            self._option.geomgroup[0] = 0  # collision meshes hidden, visual meshes (group 1) shown
            self._option.geomgroup[1] = 1
        self._renderer.update_scene(sim.data._data, camera=camera, scene_option=self._option)
        return np.ascontiguousarray(self._renderer.render())

    def close(self) -> None:
        """Free the renderer's GL context."""
        if self._renderer is not None:
            self._renderer.close()
        self._renderer, self._model = None, None
