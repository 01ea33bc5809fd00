import os
import subprocess
import sys

CODE = """
from lfm_policy.envs.metaworld_tasks import make_metaworld_env
env = make_metaworld_env("reach-v3", images=True)
obs, _ = env.reset(seed=0)
import diffusers  # imports torch._dynamo -> triton, after a Mesa GL context exists
env.close()
print("ok", obs["corner2_image"].shape)
"""


def test_rendering_then_importing_diffusers_does_not_crash():
    env = {**os.environ, "MUJOCO_GL": "egl"}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok (84, 84, 3)" in out.stdout
