import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def _shared_root(tmp_path_factory) -> Path:
    """A directory shared by all pytest-xdist workers of this run (the session's basetemp otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def robomimic_files(tmp_path_factory) -> dict:
    """raw.hdf5 (states/actions/model xml) and obs.hdf5 made by robomimic's dataset_states_to_obs.

    Built once per test run (a file lock lets xdist workers share it); takes ~20 s.
    """
    out = _shared_root(tmp_path_factory) / "robomimic_fixture"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "DONE").exists():
            env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
            proc = subprocess.run([sys.executable, str(HERE / "robomimic_fixture.py"), str(out)],
                                  capture_output=True, text=True, env=env, timeout=300)
            if proc.returncode != 0 or not (out / "DONE").exists():
                raise RuntimeError(f"robomimic fixture failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"raw": out / "raw.hdf5", "obs": out / "obs.hdf5"}


def make_episode(rng: np.random.Generator, length: int, *, image: bool = True, action_dim: int = 3) -> dict:
    """A synthetic episode: float32 actions and state, optional uint8 8x8 camera."""
    ep = {
        "action": rng.uniform(-2, 2, size=(length, action_dim)).astype(np.float32),
        "state": rng.normal(size=(length, 4)).astype(np.float32),
    }
    if image:
        ep["camera"] = rng.integers(0, 256, size=(length, 8, 8, 3), dtype=np.uint8)
    return ep


@pytest.fixture
def episode_factory():
    return make_episode
