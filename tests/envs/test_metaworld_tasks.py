import numpy as np
import pytest

from lfm_policy.envs.metaworld_tasks import (
    METAWORLD_MAX_EPISODE_STEPS,
    METAWORLD_TASK_NAMES,
    MetaWorldExpert,
    make_metaworld_env,
)
from lfm_policy.errors import LfmPolicyError


def test_task_names_are_the_50_v3_tasks_with_experts():
    from metaworld.policies import ENV_POLICY_MAP

    assert len(METAWORLD_TASK_NAMES) == 50 == len(set(METAWORLD_TASK_NAMES))
    assert all(n.endswith("-v3") for n in METAWORLD_TASK_NAMES)
    assert set(METAWORLD_TASK_NAMES) == set(ENV_POLICY_MAP)
    assert "pick-place-v3" in METAWORLD_TASK_NAMES


def test_every_task_resets_and_steps_within_its_spaces():
    for name in METAWORLD_TASK_NAMES:
        env = make_metaworld_env(name)
        try:
            obs, info = env.reset(seed=0)
            assert env.observation_space.contains(obs), name
            assert obs["state"].dtype == np.float32 and obs["state"].shape == (39,)
            assert info["is_success"] is False
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs), name
            assert isinstance(info["is_success"], bool) and isinstance(reward, float)
            assert not truncated
            assert env.max_episode_steps == METAWORLD_MAX_EPISODE_STEPS
        finally:
            env.close()


def test_reset_seed_selects_the_variation_reproducibly():
    a = make_metaworld_env("pick-place-v3")
    b = make_metaworld_env("pick-place-v3", seed=123)
    try:
        s0 = a.reset(seed=0)[0]["state"]
        s1 = a.reset(seed=1)[0]["state"]
        for _ in range(5):  # history must not matter
            a.step(np.ones(4, np.float32))
        again = a.reset(seed=0)[0]["state"]
        other_instance = b.reset(seed=0)[0]["state"]
        np.testing.assert_array_equal(s0, again)
        np.testing.assert_array_equal(s0, other_instance)
        # different seeds move the object (state[4:7]) and the goal (state[36:39])
        assert np.linalg.norm(s0[4:7] - s1[4:7]) > 1e-3 and np.linalg.norm(s0[36:39] - s1[36:39]) > 1e-3
    finally:
        a.close()
        b.close()


def test_unseeded_resets_follow_the_constructor_seed():
    def states(seed):
        env = make_metaworld_env("reach-v3", seed=seed)
        try:
            out = [env.reset() for _ in range(3)]
        finally:
            env.close()
        return np.stack([o["state"] for o, _ in out]), [i["episode_seed"] for _, i in out]

    (x1, seeds1), (x2, seeds2), (x3, _) = states(5), states(5), states(6)
    np.testing.assert_array_equal(x1, x2)
    assert seeds1 == seeds2 and len(set(seeds1)) == 3
    assert not np.allclose(x1, x3)
    # each episode is reproducible from its reported seed alone
    env = make_metaworld_env("reach-v3")
    try:
        np.testing.assert_array_equal(env.reset(seed=seeds1[2])[0]["state"], x1[2])
    finally:
        env.close()


def test_truncation_at_max_episode_steps():
    env = make_metaworld_env("door-open-v3", max_episode_steps=4)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(4, np.float32))[3] for _ in range(4)]
        assert flags == [False, False, False, True]
    finally:
        env.close()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(LfmPolicyError, match="unknown Meta-World task"):
        make_metaworld_env("pick-place-v2")
    with pytest.raises(LfmPolicyError, match="camera"):
        make_metaworld_env("reach-v3", images=True, camera="front")
    with pytest.raises(LfmPolicyError, match="camera"):
        make_metaworld_env("reach-v3", camera="front")  # render() would use it even without images
    with pytest.raises(LfmPolicyError, match="render_settings"):
        make_metaworld_env("reach-v3", render_settings="pretty")
    env = make_metaworld_env("reach-v3")
    try:
        env.reset(seed=0)
        with pytest.raises(LfmPolicyError, match="shape"):
            env.step(np.zeros(3))
    finally:
        env.close()


def test_render_without_images_matches_the_camera_observation():
    low = make_metaworld_env("reach-v3", camera="corner3")
    cam = make_metaworld_env("reach-v3", images=True, camera="corner3")
    slow = make_metaworld_env("reach-v3", camera="corner3", render_settings="default")
    try:
        assert set(low.reset(seed=4)[0]) == {"state", "proprio"}
        obs, _ = cam.reset(seed=4)
        slow.reset(seed=4)
        frame = low.render()
        assert frame.shape == (84, 84, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, obs["corner3_image"])
        assert (np.abs(slow.render().astype(int) - frame).max(-1) > 10).mean() > 0.005  # shadows etc. on
        desc = low.env_description()
        assert desc["cameras"] == [] and desc["video_camera"]["name"] == "corner3"
        assert cam.env_description()["cameras"] == [{"name": "corner3", "height": 84, "width": 84}]
        assert slow.env_description()["render_settings"] == "default"
    finally:
        for env in (low, cam, slow):
            env.close()


def test_default_images_are_84x84_uint8_and_reproducible():
    env = make_metaworld_env("drawer-open-v3", images=True, camera="topview")
    try:
        obs, _ = env.reset(seed=2)
        assert set(obs) == {"state", "proprio", "topview_image"}
        img = obs["topview_image"]
        assert img.dtype == np.uint8 and img.shape == (84, 84, 3) and img.std() > 10
        env.step(np.ones(4, np.float32))
        np.testing.assert_array_equal(env.reset(seed=2)[0]["topview_image"], img)
    finally:
        env.close()


def _green_centroid(img: np.ndarray) -> np.ndarray:
    img = img.astype(int)
    mask = (img[..., 1] > 150) & (img[..., 0] < 90) & (img[..., 2] < 90)
    assert mask.sum() >= 2, "green object not visible"
    return np.argwhere(mask).mean(0)  # (row, col)


def test_corner_camera_images_are_upright_and_not_mirrored():
    import mujoco  # after metaworld_tasks, which selects the headless GL backend

    env = make_metaworld_env("pick-place-v3", images=True, camera="corner2", image_size=160)
    try:
        obs, _ = env.reset(seed=0)
        img = obs["corner2_image"]
        assert img.dtype == np.uint8 and img.shape == (160, 160, 3) and env.observation_space.contains(obs)
        mw = env.unwrapped_metaworld
        model, data = mw.model, mw.data
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "obj")
        geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == body]
        model.geom_rgba[geoms] = [0, 1, 0, 1]  # the puck is red like the Sawyer: paint it green
        model.geom_matid[geoms] = -1
        start = data.body("obj").xpos.copy()
        base = _green_centroid(env.render())

        # lift the puck 20 cm: in an upright image it moves up (smaller row)
        mw._set_obj_xyz(start + [0, 0, 0.2])
        up = _green_centroid(env.render())
        assert up[0] < base[0] - 5

        # move it to the viewer's right (view direction x world up): it moves right (larger column)
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
        forward = -data.cam_xmat[cam].reshape(3, 3)[:, 2]
        right = np.cross(forward, [0, 0, 1])
        right /= np.linalg.norm(right)
        mw._set_obj_xyz(start + 0.2 * right)
        moved = _green_centroid(env.render())
        assert moved[1] > base[1] + 5
    finally:
        env.close()


@pytest.mark.parametrize("name", ["reach-v3", "pick-place-v3", "drawer-open-v3"])
def test_expert_solves_task(name):
    env = make_metaworld_env(name)
    expert = MetaWorldExpert(env)
    successes = 0
    try:
        for seed in range(3):
            obs, _ = env.reset(seed=seed)
            expert.reset()
            for _ in range(env.max_episode_steps):
                action = expert.act(obs)
                assert action.dtype == np.float32 and env.action_space.contains(action)
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            successes += bool(info["is_success"] and terminated)
    finally:
        env.close()
    assert successes == 3
