"""Test-wide settings: one torch thread per xdist worker (2 workers on 2 cores, no oversubscription)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)
