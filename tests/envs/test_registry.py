import os
import subprocess
import sys

import numpy as np
import pytest

from lfm_policy.cli import main
from lfm_policy.envs import registry
from lfm_policy.envs.registry import UnknownTaskError
from lfm_policy.errors import LfmPolicyError


def test_registry_lists_all_families():
    names = registry.list_tasks()
    assert len(registry.list_tasks("toy")) == 2
    detour = set(registry.DETOUR_TASKS)
    assert [n for n in registry.list_tasks("robosuite") if n not in detour] == [
        "robosuite/Lift",
        "robosuite/PickPlaceCan",
        "robosuite/NutAssemblySquare",
    ]
    mw = [n for n in registry.list_tasks("metaworld") if n not in detour]
    assert len(mw) == 50 and "metaworld/pick-place-v3" in mw
    builtin = [n for n in names if n.split("/")[0] in ("toy", "metaworld", "robosuite")]
    assert len(names) == len(set(names)) and len(builtin) == 55 + len(detour)


def test_static_metaworld_names_match_the_package():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert sorted(registry.METAWORLD_V3_NAMES) == sorted(ALL_V3_ENVIRONMENTS)


def test_listing_and_toy_tasks_do_not_import_simulators():
    code = (
        "import sys\n"
        "from lfm_policy.envs import registry\n"
        "registry.list_tasks()\n"
        "env = registry.make_env('toy/point-obstacle', images=True)\n"
        "expert = registry.make_expert('toy/point-obstacle', env)\n"
        "obs, _ = env.reset(seed=0); expert.reset(); env.step(expert.act(obs))\n"
        "from lfm_policy.cli import main\n"
        "main(['tasks', 'toy'])\n"
        "bad = [m for m in ('mujoco', 'metaworld', 'robosuite', 'robomimic') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unknown_task_names_close_matches():
    with pytest.raises(UnknownTaskError, match="did you mean toy/point-obstacle"):
        registry.make_env("toy/point-obstacel")
    with pytest.raises(UnknownTaskError, match="metaworld/pick-place-v3"):
        registry.get_task_spec("pick-place")
    with pytest.raises(UnknownTaskError, match="unknown task 'nothing/like-it'"):
        registry.make_expert("nothing/like-it", None)


def test_unknown_task_cli_one_line_error(capsys):
    assert main(["tasks", "toy/nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown task 'toy/nope'" in err and "Traceback" not in err


def test_toy_spec_has_obs_and_action_specs():
    spec = registry.get_task_spec("toy/point-obstacle")
    assert spec.family == "toy" and spec.max_episode_steps == 80 and spec.has_expert
    assert spec.obs_spec == {
        "agent_pos": ((2,), "float32"),
        "goal_pos": ((2,), "float32"),
        "obstacles": ((3,), "float32"),
    }
    assert spec.action_spec == {"shape": (2,), "low": [-1.0, -1.0], "high": [1.0, 1.0]}
    img = registry.get_task_spec("toy/point-obstacle", images=True)
    assert img.obs_spec["top_image"] == ((64, 64, 3), "uint8")


def test_register_custom_task():
    from lfm_policy.envs.toy import PointObstacleConfig, PointObstacleEnv, PointObstacleExpert

    name = "custom/short-toy"
    registry.register_task(
        name,
        lambda images=False, seed=None: PointObstacleEnv(PointObstacleConfig(max_episode_steps=20), images=images),
        PointObstacleExpert,
        max_episode_steps=20,
        description="short toy",
    )
    try:
        assert name in registry.list_tasks("custom")
        env = registry.make_env(name)
        obs, _ = env.reset(seed=0)
        action = registry.make_expert(name, env).act(obs)
        assert action.shape == (2,) and np.all(np.abs(action) <= 1)
        assert registry.get_task_spec(name).max_episode_steps == 20
        with pytest.raises(LfmPolicyError, match="already registered"):
            registry.register_task(name, lambda **kw: None)
        with pytest.raises(LfmPolicyError, match="<family>/<task>"):
            registry.register_task("noslash", lambda **kw: None)
    finally:
        registry._REGISTRY.pop(name, None)


def test_tasks_cli_lists_specs(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "toy/point-obstacle" in out and "metaworld/pick-place-v3" in out and "robosuite/Lift" in out
    assert "obs: agent_pos float32 (2,)" in out and "top_image uint8 (64, 64, 3)" in out
    assert main(["tasks", "toy", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == registry.list_tasks("toy")
    assert rows[0]["action"]["shape"] == [2]


def test_images_without_a_working_gl_backend_is_a_one_line_error(tmp_path):
    env = dict(os.environ, MUJOCO_GL="no-such-backend")
    res = subprocess.run(
        [sys.executable, "-m", "lfm_policy.cli", "collect", "--task", "metaworld/reach-v3", "--images",
         "--episodes", "1", "--out", str(tmp_path / "x.zarr"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "MUJOCO_GL=no-such-backend" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "x.zarr").exists()
