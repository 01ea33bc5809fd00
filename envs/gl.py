"""Check that MuJoCo can render headless before a long collection or evaluation starts."""

from __future__ import annotations

import os

from lfm_policy.envs.robomimic_compat import setup_headless_gl
from lfm_policy.errors import LfmPolicyError

_GL_OK = False


class GLBackendError(LfmPolicyError, RuntimeError):
    """No OpenGL backend works for MuJoCo's offscreen rendering."""


def require_gl() -> None:
    """Make sure MuJoCo can create an offscreen OpenGL context in this process.

    Sets ``MUJOCO_GL=egl`` when there is no display (before mujoco is imported), then creates and
    frees a tiny context. Call it in the process that will render (each worker creates its own).

    Raises:
        GLBackendError: Naming the backend that failed and how to fix it.

    """
    global _GL_OK
    if _GL_OK:
        return
    setup_headless_gl()
    backend = os.environ.get("MUJOCO_GL", "<default>")
    try:
        import mujoco

        ctx = mujoco.GLContext(8, 8)
        ctx.make_current()
        ctx.free()
    except Exception as e:  # noqa: BLE001  (any failure here means "no GL"; the cause is in the message)
        raise GLBackendError(
            f"MuJoCo cannot render with MUJOCO_GL={backend} ({type(e).__name__}: {e}); install EGL "
            "(libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or osmesa, or run without --images"
        ) from None
    _GL_OK = True
