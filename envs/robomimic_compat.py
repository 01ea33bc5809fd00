"""Make robomimic 0.3.0's robosuite wrapper importable with robosuite 1.4.1 on the mujoco bindings.

robomimic 0.3.0's ``robomimic/envs/env_robosuite.py`` does ``import mujoco_py`` at module top, and uses
it in exactly one place: ``rollout_exceptions`` returns ``mujoco_py.builder.MujocoException``.
robosuite 1.4.1 runs on DeepMind's ``mujoco`` bindings and never needs mujoco_py (which cannot be
installed without the old MuJoCo 2.1 binaries). We register a tiny stand-in module exposing only
that exception class, before robomimic's wrapper is imported. This is a compatibility shim, not a
simulator fake: all simulation runs in the real ``mujoco`` package.
"""

from __future__ import annotations

import os
import sys
import types


def setup_headless_gl() -> None:
    """Select EGL for MuJoCo rendering when no display is present (must run before mujoco loads).

    Also loads triton first when it is installed (torch's CUDA wheels bring it). Mesa's software
    renderer (llvmpipe, behind EGL/OSMesa) and triton each carry their own LLVM; once a Mesa context
    exists, a later ``import triton`` — which torch._dynamo does, and diffusers imports torch._dynamo —
    segfaults the process. Loaded in the other order, both work (tests/envs/test_gl_triton.py).
    """
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    if os.environ.get("MUJOCO_GL") == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    if os.environ.get("MUJOCO_GL") in ("egl", "osmesa") and "triton" not in sys.modules:
        import importlib.util

        if importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401


def install_mujoco_py_stub() -> None:
    """Register the ``mujoco_py`` stand-in described in the module docstring (idempotent)."""
    if "mujoco_py" in sys.modules:
        return
    stub = types.ModuleType("mujoco_py")
    builder = types.ModuleType("mujoco_py.builder")

    class MujocoException(Exception):
        """Stand-in for ``mujoco_py.builder.MujocoException`` (never raised by the mujoco bindings)."""

    builder.MujocoException = MujocoException
    stub.builder = builder
    stub.__doc__ = "lfm-policy stand-in: only builder.MujocoException, for robomimic 0.3.0's import."
    sys.modules["mujoco_py"] = stub
    sys.modules["mujoco_py.builder"] = builder


def import_robomimic_env_utils():
    """Return ``robomimic.utils.env_utils`` with headless GL and the mujoco_py stand-in set up."""
    setup_headless_gl()
    install_mujoco_py_stub()
    import robomimic.utils.env_utils as env_utils

    return env_utils
