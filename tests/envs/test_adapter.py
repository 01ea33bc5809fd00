import re

import gymnasium as gym
import numpy as np
import pytest
from markdown_blocks import DOCS, fenced_blocks

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.envs import registry
from lfm_policy.envs.adapter import AdapterError, GymAdapter
from lfm_policy.envs.collect import CollectConfig, collect
from lfm_policy.envs.toy import PointObstacleEnv


def test_array_observation_with_slices_and_success_fn():
    env = GymAdapter(
        gym.make("Pendulum-v1"),
        {"cos_sin": "[0:2]", "velocity": "[2:]"},
        success_fn=lambda obs, reward, terminated, truncated, info: obs[0] > 0.0,
    )
    assert env.max_episode_steps == 200
    assert env.observation_space["cos_sin"].shape == (2,) and env.observation_space["velocity"].shape == (1,)
    assert env.observation_space["velocity"].high[0] == 8.0
    obs, info = env.reset(seed=0)
    raw, _ = env.unwrapped.reset(seed=0), None
    assert info["is_success"] is False
    np.testing.assert_allclose(obs["cos_sin"], raw[0][:2])
    assert obs["cos_sin"].dtype == np.float32 and env.observation_space.contains(obs)
    successes = []
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(np.array([2.0]))
        successes.append(info["is_success"])
        assert info["is_success"] == bool(obs["cos_sin"][0] > 0.0)
    env.close()


def test_default_keys_for_array_observation():
    env = GymAdapter(gym.make("Pendulum-v1"))
    assert list(env.observation_space.spaces) == ["state"]
    obs, _ = env.reset(seed=1)
    assert obs["state"].shape == (3,)


def test_dict_observation_mapping_and_images():
    env = GymAdapter(
        PointObstacleEnv(images=True),
        {"pos": "agent_pos", "goal_x": "goal_pos[0:1]", "cam_image": "top_image"},
        max_episode_steps=80,
    )
    obs, _ = env.reset(seed=2)
    raw = env.unwrapped._obs()
    assert set(obs) == {"pos", "goal_x", "cam_image"}
    np.testing.assert_array_equal(obs["pos"], raw["agent_pos"])
    assert obs["goal_x"].shape == (1,) and obs["goal_x"][0] == raw["goal_pos"][0]
    assert obs["cam_image"].dtype == np.uint8 and obs["cam_image"].shape == (64, 64, 3)
    _, _, _, _, info = env.step(np.array([0.0, 1.0]))
    assert isinstance(info["is_success"], bool)


def test_default_keys_for_dict_observation_keep_names():
    env = GymAdapter(PointObstacleEnv(images=True), max_episode_steps=80)
    assert set(env.observation_space.spaces) == {"agent_pos", "goal_pos", "obstacles", "top_image"}


@pytest.mark.parametrize(
    "obs_keys, match",
    [
        ({"pos": "nope"}, "no entry 'nope'"),
        ({"pos_image": "agent_pos"}, "only image keys may end in '_image'"),
        ({"cam": "top_image"}, "only image keys may end in '_image'"),
        ({"pos": "agent_pos[5:9]"}, "selects nothing"),
        ({"pos": "agent_pos[a:b]"}, "cannot parse"),
    ],
)
def test_bad_mappings_raise(obs_keys, match):
    with pytest.raises(AdapterError, match=re.escape(match)):
        GymAdapter(PointObstacleEnv(images=True), obs_keys, max_episode_steps=80)


def test_discrete_actions_and_missing_limit_raise():
    with pytest.raises(AdapterError, match="Box"):
        GymAdapter(gym.make("CartPole-v1"))
    with pytest.raises(AdapterError, match="max_episode_steps"):
        GymAdapter(PointObstacleEnv())


def test_rendered_camera_from_a_mujoco_env():
    from lfm_policy.envs.robomimic_compat import setup_headless_gl

    setup_headless_gl()
    env = GymAdapter(
        gym.make("InvertedPendulum-v5", render_mode="rgb_array", width=96, height=96),
        {"qpos": "[0:2]", "qvel": "[2:4]"},
        success_fn=lambda obs, reward, terminated, truncated, info: not terminated,
        render_image_key="side_image",
        image_size=48,
    )
    obs, _ = env.reset(seed=0)
    assert obs["side_image"].shape == (48, 48, 3) and obs["side_image"].dtype == np.uint8
    assert obs["side_image"].std() > 1.0  # a real picture, not a blank frame
    obs, _, terminated, _, info = env.step(np.zeros(1))
    assert info["is_success"] == (not terminated)
    env.close()


def test_success_fn_sees_the_raw_observation_and_the_description_says_how_it_was_built():
    seen = []

    def success(obs, reward, terminated, truncated, info):
        seen.append(obs)
        return False

    env = GymAdapter(gym.make("Pendulum-v1"), {"cos_sin": "[0:2]", "velocity": "[2:3]"}, success_fn=success)
    env.reset(seed=0)
    adapted = env.step(np.zeros(1))[0]
    assert isinstance(seen[0], np.ndarray) and seen[0].shape == (3,)  # Pendulum's own array, not the dict
    np.testing.assert_allclose(adapted["cos_sin"], seen[0][:2], rtol=1e-6)
    desc = env.env_description()
    assert desc["wrapped_env_id"] == "Pendulum-v1" and desc["obs_keys"] == {"cos_sin": "[0:2]", "velocity": "[2:3]"}
    assert desc["success"].startswith("success_fn") and desc["cameras"] == [] and desc["max_episode_steps"] == 200
    env.close()


TASKS = DOCS / "tasks.md"


def test_docs_adapter_example_registers_a_collectable_task(tmp_path):
    blocks = fenced_blocks(TASKS, "## Plugging in any gymnasium environment")
    example = [b for b in blocks if "GymAdapter(" in b]
    assert example, "the envs docs must contain the GymAdapter example"
    namespace: dict = {}
    exec(compile(example[0], "docs:GymAdapter example", "exec"), namespace)
    try:
        res = collect(CollectConfig(task="custom/pendulum", n_episodes=3), tmp_path / "pendulum.zarr")
        assert res.n_kept == 3 and res.n_discarded == 0
        buf = ReplayBuffer.open(tmp_path / "pendulum.zarr")
        assert set(buf.keys) == {"cos_sin", "velocity", "action"}
        assert buf.key_spec("action")[0] == (1,)
    finally:
        registry._REGISTRY.pop("custom/pendulum", None)


def test_docs_registry_example_runs(capsys):
    blocks = fenced_blocks(TASKS, "## Task conventions")
    example = [b for b in blocks if "make_expert(" in b and "GymAdapter" not in b]
    assert example
    exec(compile(example[0], "docs:registry example", "exec"), {})
    out = capsys.readouterr().out
    assert "True right (64, 64, 3)" in out and "agent_pos" in out
