import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfm_policy.envs.robosuite_tasks import (
    ROBOSUITE_MAX_EPISODE_STEPS,
    ROBOSUITE_TASK_NAMES,
    EnvMetaError,
    RobosuiteExpert,
    default_env_meta,
    make_robosuite_env,
)
from lfm_policy.errors import LfmPolicyError

FIXTURE_SCRIPT = Path(__file__).resolve().parents[1] / "datasets" / "robomimic_fixture.py"


@pytest.fixture(scope="module")
def robomimic_obs_file(tmp_path_factory):
    """obs.hdf5 made by robomimic's dataset_states_to_obs (32 px cameras); shared with tests/datasets."""
    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "robomimic_fixture"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:  # the same directory and lock as tests/datasets/conftest.py
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "DONE").exists():
            env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
            proc = subprocess.run([sys.executable, str(FIXTURE_SCRIPT), str(out)], capture_output=True, text=True,
                                  env=env, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "obs.hdf5"


LOW_DIM = {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,)}
OBJECT_DIM = {"Lift": 10, "PickPlaceCan": 14, "NutAssemblySquare": 14}


@pytest.fixture(scope="module")
def envs():
    # hard_reset=False: these tests are not about resets (a hard reset costs ~0.5 s)
    made = {name: make_robosuite_env(name, hard_reset=False) for name in ROBOSUITE_TASK_NAMES}
    yield made
    for env in made.values():
        env.close()


def run_expert(env, seed):
    expert = RobosuiteExpert(env)
    obs, _ = env.reset(seed=seed)
    expert.reset()
    for steps in range(1, env.max_episode_steps + 1):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            return bool(info["is_success"] and terminated), steps
    raise AssertionError("episode did not end at max_episode_steps")


def test_default_env_meta_is_robomimic_env_args():
    meta = default_env_meta("PickPlaceCan")
    json.dumps(meta)  # stored as JSON in robomimic HDF5 files
    assert meta["env_name"] == "PickPlaceCan" and meta["type"] == 1
    kw = meta["env_kwargs"]
    assert kw["robots"] == ["Panda"] and kw["control_freq"] == 20
    assert kw["controller_configs"]["type"] == "OSC_POSE"
    assert kw["controller_configs"]["output_max"] == [0.05, 0.05, 0.05, 0.5, 0.5, 0.5]
    assert kw["hard_reset"] is True  # as robosuite's default and robomimic's datasets


def test_each_task_resets_and_steps_within_its_spaces(envs):
    for name, env in envs.items():
        obs, info = env.reset(seed=0)
        assert set(obs) == set(LOW_DIM) | {"object"}
        for key, shape in {**LOW_DIM, "object": (OBJECT_DIM[name],)}.items():
            assert obs[key].shape == shape and obs[key].dtype == np.float32, (name, key)
        assert env.observation_space.contains(obs)
        assert env.action_space.shape == (7,) and info["is_success"] is False
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert env.observation_space.contains(obs) and isinstance(info["is_success"], bool)
        assert isinstance(reward, float) and not terminated and not truncated
        assert env.max_episode_steps == ROBOSUITE_MAX_EPISODE_STEPS[name]
        assert env.env_meta["env_name"] == name
        assert env.env_meta["env_kwargs"]["controller_configs"]["type"] == "OSC_POSE"


def test_reset_is_deterministic_across_instances_and_keeps_global_rng(envs):
    lift = envs["Lift"]
    other = make_robosuite_env("Lift", seed=99, hard_reset=False)
    try:
        np.random.seed(1234)
        before = np.random.get_state()[1].copy()
        a = lift.reset(seed=7)[0]
        state = lift.get_state()
        for _ in range(3):
            lift.step(np.ones(7, np.float32))
        b = other.reset(seed=7)[0]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(state, other.get_state())
        np.testing.assert_array_equal(lift.reset(seed=7)[0]["object"], a["object"])
        assert np.linalg.norm(lift.reset(seed=8)[0]["object"][:2] - a["object"][:2]) > 1e-3
        np.testing.assert_array_equal(np.random.get_state()[1], before)
    finally:
        other.close()
    square = envs["NutAssemblySquare"]
    x0 = square.reset(seed=3)[0]["object"]
    np.testing.assert_array_equal(square.reset(seed=3)[0]["object"], x0)
    assert not np.allclose(square.reset(seed=4)[0]["object"], x0)


def test_state_and_model_xml_restore_through_robomimic(envs):
    env = envs["PickPlaceCan"]
    obs, _ = env.reset(seed=5)
    state, xml = env.get_state(), env.model_xml
    sim = env.robosuite_env.sim
    assert state.dtype == np.float64 and state.shape == (1 + sim.model.nq + sim.model.nv,)
    assert xml.lstrip().startswith("<mujoco")
    for _ in range(5):
        env.step(np.r_[np.ones(6), -1.0].astype(np.float32))
    restored = env.robomimic_env.reset_to({"states": state})  # how robomimic replays HDF5 `states`
    np.testing.assert_allclose(restored["object"], obs["object"], atol=1e-6)
    np.testing.assert_allclose(restored["robot0_eef_pos"], obs["robot0_eef_pos"], atol=1e-6)


def test_env_meta_is_used_and_checked():
    meta = default_env_meta("Lift")
    meta["env_kwargs"]["control_freq"] = 10
    env = make_robosuite_env("Lift", env_meta=meta, max_episode_steps=3, hard_reset=False)
    try:
        assert env.robosuite_env.control_freq == 10 and env.env_meta["env_kwargs"]["control_freq"] == 10
        desc = env.env_description()
        assert desc["control_freq"] == 10.0 and desc["controller"] == "OSC_POSE" and desc["hard_reset"] is False
        assert desc["env_meta"]["env_kwargs"]["hard_reset"] is False and desc["render_settings"] == "fast"
        json.dumps(desc)
        env.reset(seed=0)
        flags = [env.step(np.zeros(7))[3] for _ in range(3)]
        assert flags == [False, False, True]
        with pytest.raises(LfmPolicyError, match="shape"):
            env.step(np.zeros(4))
    finally:
        env.close()
    with pytest.raises(EnvMetaError, match="env_name"):
        make_robosuite_env("PickPlaceCan", env_meta=default_env_meta("Lift"))
    with pytest.raises(EnvMetaError, match="env_kwargs"):
        make_robosuite_env("Lift", env_meta={"env_name": "Lift", "type": 1})
    with pytest.raises(LfmPolicyError, match="unknown robosuite task"):
        make_robosuite_env("Stack")
    with pytest.raises(LfmPolicyError, match="render_settings"):
        make_robosuite_env("Lift", render_settings="pretty")
    with pytest.raises(LfmPolicyError, match="hard_reset"):
        make_robosuite_env("Lift", hard_reset="no")


def test_robomimic_style_env_args_with_hard_reset_and_images():
    # env_args as robomimic's released robosuite datasets store them: no env_version, the older
    # "damping" controller keys, no hard_reset (robosuite's default: rebuild the model every reset)
    ctrl = {"type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05] * 3 + [0.5] * 3,
            "output_min": [-0.05] * 3 + [-0.5] * 3, "kp": 150, "damping": 1, "impedance_mode": "fixed",
            "kp_limits": [0, 300], "damping_limits": [0, 10], "position_limits": None, "orientation_limits": None,
            "uncouple_pos_ori": True, "control_delta": True, "interpolation": None, "ramp_ratio": 0.2}  # fmt: skip
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {
        "has_renderer": False, "has_offscreen_renderer": True, "ignore_done": True, "use_object_obs": True,
        "use_camera_obs": True, "control_freq": 20, "controller_configs": ctrl, "robots": ["Panda"],
        "camera_depths": False, "camera_heights": 84, "camera_widths": 84, "reward_shaping": False}}  # fmt: skip
    env = make_robosuite_env("Lift", env_meta=json.loads(json.dumps(env_args)), images=True)
    try:
        assert env.robosuite_env.hard_reset is True  # robosuite's default when env_args have no hard_reset
        a = env.reset(seed=3)[0]
        sizes_a = list(env.robosuite_env.cube.size)
        env.reset(seed=4)
        assert list(env.robosuite_env.cube.size) != sizes_a  # hard reset: model (cube size) resampled
        b = env.reset(seed=3)[0]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        # the new simulation's render context got the fast settings before the observation was taken
        np.testing.assert_array_equal(b["agentview_image"], env.render())
        import mujoco

        ctx = env.robosuite_env.sim._render_context_offscreen
        assert ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0 and ctx.con.offSamples == 0
        assert env.env_meta["env_version"] == "1.4.1"
    finally:
        env.close()


def test_default_hard_reset_seeds_the_model_level_randomisation():
    env = make_robosuite_env("Lift")  # registered default: hard_reset=True, as robomimic's demonstrations
    fresh = make_robosuite_env("Lift")
    soft = make_robosuite_env("Lift", hard_reset=False)
    try:
        assert env.robosuite_env.hard_reset and env.env_meta["env_kwargs"]["hard_reset"] is True
        cube = lambda e: np.asarray(e.robosuite_env.cube.size).copy()  # noqa: E731
        env.reset(seed=11)
        size_11, state_11 = cube(env), env.get_state()
        env.reset(seed=12)
        assert not np.allclose(cube(env), size_11)  # another seed, another cube size
        env.reset(seed=11)
        np.testing.assert_array_equal(cube(env), size_11)  # the same seed, the same cube and state
        np.testing.assert_array_equal(env.get_state(), state_11)
        fresh.reset(seed=11)  # a fresh env with that seed: the same state
        np.testing.assert_array_equal(cube(fresh), size_11)
        np.testing.assert_array_equal(fresh.get_state(), state_11)
        soft.reset(seed=11)
        size_soft = cube(soft)
        soft.reset(seed=12)
        np.testing.assert_array_equal(cube(soft), size_soft)  # reset in place: one cube size for every seed
    finally:
        for e in (env, fresh, soft):
            e.close()


def test_render_settings_reproduce_robomimic_frames(robomimic_obs_file):
    """Replaying a robomimic dataset's states: "default" gives its stored frames, "fast" does not."""
    import h5py

    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile

    meta = RobomimicFile(robomimic_obs_file).env_meta
    share = {}
    for setting in ("default", "fast"):
        env = make_robosuite_env("Lift", env_meta=meta, images=True, render_settings=setting)
        try:
            assert env.image_size == 32  # taken from the file's env_args
            diffs = []
            with h5py.File(robomimic_obs_file) as f:
                g = f["data/demo_0"]
                for t in (0, 3, 7):
                    obs = env.reset_to_state(g["states"][t], g.attrs["model_file"] if t == 0 else None)
                    for cam in ("agentview_image", "robot0_eye_in_hand_image"):
                        diffs.append(np.abs(obs[cam].astype(int) - g["obs"][cam][t].astype(int)).max(-1))
                    np.testing.assert_allclose(obs["object"], g["obs"]["object"][t], atol=1e-6)
            share[setting] = float((np.stack(diffs) > 10).mean())
        finally:
            env.close()
    assert share["default"] == 0.0  # measured: identical pixels (docs/tasks.md)
    assert share["fast"] > 0.02  # measured ~8 % at 32 px


def test_render_without_camera_observations_matches_the_camera():
    low = make_robosuite_env("Lift", hard_reset=False)
    cam = make_robosuite_env("Lift", images=True, hard_reset=False)
    try:
        low.reset(seed=2)
        obs, _ = cam.reset(seed=2)
        frame = low.render()
        assert frame.shape == (84, 84, 3) and frame.dtype == np.uint8 and "agentview_image" not in low.reset(seed=2)[0]
        np.testing.assert_array_equal(low.render(), cam.render())
        np.testing.assert_array_equal(cam.render(), obs["agentview_image"])
    finally:
        low.close()
        cam.close()


def test_cameras_option_renders_only_the_cameras_asked_for():
    both = make_robosuite_env("Lift", images=True, image_size=32, hard_reset=False)
    one = make_robosuite_env("Lift", images=True, image_size=32, hard_reset=False, cameras=["agentview"])
    try:
        obs_both, obs_one = both.reset(seed=3)[0], one.reset(seed=3)[0]
        assert "robot0_eye_in_hand_image" not in obs_one and one.observation_space.contains(obs_one)
        np.testing.assert_array_equal(obs_one["agentview_image"], obs_both["agentview_image"])
        assert one.env_meta["env_kwargs"]["camera_names"] == ["agentview"]
    finally:
        both.close()
        one.close()
    with pytest.raises(LfmPolicyError, match="cameras"):
        make_robosuite_env("Lift", images=True, cameras=["frontview"])


def _red_centroid(img):
    img = img.astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mask = (r > 80) & (r > 2 * g) & (r > 2 * b)
    assert mask.sum() >= 4, "red cube not visible"
    return np.argwhere(mask).mean(0)  # (row, col)


def test_images_are_uint8_upright_and_not_mirrored():
    env = make_robosuite_env("Lift", images=True, image_size=84)
    try:
        obs, _ = env.reset(seed=0)
        for cam in ("agentview", "robot0_eye_in_hand"):
            img = obs[f"{cam}_image"]
            assert img.dtype == np.uint8 and img.shape == (84, 84, 3)
        assert env.observation_space.contains(obs)
        kwargs = json.loads(json.dumps(env.env_meta))["env_kwargs"]
        assert kwargs["camera_names"] == ["agentview", "robot0_eye_in_hand"] and kwargs["camera_heights"] == 84
        assert kwargs["use_camera_obs"] is True
        # creating another robomimic env re-initializes robomimic's global image-key registry
        make_robosuite_env("Lift").close()
        obs = env.step(np.zeros(7, np.float32))[0]
        assert "agentview_image" in obs and env.observation_space.contains(obs)

        rs = env.robosuite_env
        sim = rs.sim
        joint = rs.cube.joints[0]
        start = sim.data.get_joint_qpos(joint).copy()

        def render_with_cube_at(offset):
            qpos = start.copy()
            qpos[:3] += offset
            sim.data.set_joint_qpos(joint, qpos)
            sim.forward()
            return _red_centroid(env.render())

        base = render_with_cube_at([0, 0, 0])
        # lifted 15 cm, the cube moves up in an upright image
        assert render_with_cube_at([0, 0, 0.15])[0] < base[0] - 5
        # moved to the viewer's right (view direction x world up), it moves right
        cam = sim.model.camera_name2id("agentview")
        forward = -sim.data.cam_xmat[cam].reshape(3, 3)[:, 2]
        right = np.cross(forward, [0, 0, 1])
        right /= np.linalg.norm(right)
        assert render_with_cube_at(0.12 * right)[1] > base[1] + 5
    finally:
        env.close()


@pytest.mark.parametrize(("name", "seeds"), [("Lift", [0, 1, 2]), ("PickPlaceCan", [0, 1])])
def test_expert_reaches_95_percent_bar(envs, name, seeds):
    results = [run_expert(envs[name], s) for s in seeds]
    assert all(ok for ok, _ in results), results


def test_square_expert_reaches_75_percent_bar(envs):
    results = [run_expert(envs["NutAssemblySquare"], s) for s in (0, 1, 2)]
    assert sum(ok for ok, _ in results) >= 2, results


def test_expert_rejects_unknown_task():
    class Fake:
        task_name = "Stack"

    with pytest.raises(LfmPolicyError, match="no scripted robosuite expert"):
        RobosuiteExpert(Fake())
