"""Every shipped config loads, matches its task's observations, builds a policy and computes a loss."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lfm_policy import Policy, PolicySpec
from lfm_policy.envs.registry import make_env
from lfm_policy.normalizer import LinearNormalizer
from lfm_policy.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASKS = {"toy_lowdim": ("toy/point-obstacle", False), "metaworld_lowdim": ("metaworld/pick-place-v3", False),
         "metaworld_image": ("metaworld/pick-place-v3", True), "robosuite_lowdim": ("robosuite/Lift", False),
         "robosuite_image": ("robosuite/Lift", True), "metaworld_lowdim_cpu": ("metaworld/pick-place-v3", False),
         "robosuite_lowdim_cpu": ("robosuite/Lift", False), "toy_image_cpu": ("toy/point-obstacle", True),
         "metaworld_image_cpu": ("metaworld/button-press-topdown-v3", True),
         "robosuite_image_cpu": ("robosuite/Lift", True)}


def test_every_config_is_covered():
    assert sorted(p.stem for p in CONFIGS.glob("*.json")) == sorted(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_config_builds_a_policy_for_its_task(name):
    cfg = TrainConfig.from_json(CONFIGS / f"{name}.json")
    task, images = TASKS[name]
    env = make_env(task, images=images, **({"camera": "corner3"} if "corner3_image" in cfg.data.obs_keys else {}))
    try:
        space = env.observation_space
        action_dim = env.action_space.shape[0]
    finally:
        env.close()
    keys = cfg.data.obs_keys
    assert set(keys) <= set(space.spaces), f"{name}: {sorted(set(keys) - set(space.spaces))} not in {task}"
    shapes = {k: tuple(space[k].shape) for k in keys}
    image_keys = tuple(k for k in keys if k.endswith("_image"))
    stats = {k: {"min": -np.ones(s), "max": np.ones(s)} for k, s in shapes.items() if k not in image_keys}
    stats["action"] = {"min": -np.ones(action_dim), "max": np.ones(action_dim)}
    policy = Policy(cfg.policy, PolicySpec(obs_shapes=shapes, image_keys=image_keys, action_dim=action_dim),
                    LinearNormalizer.from_stats(stats))
    to, h = cfg.policy.n_obs_steps, cfg.policy.horizon
    obs = {k: (torch.randint(0, 256, (2, to, *s), dtype=torch.uint8) if k in image_keys else torch.rand(2, to, *s))
           for k, s in shapes.items()}
    loss, _ = policy.compute_loss({"obs": obs, "action": torch.rand(2, h, action_dim),
                                   "action_is_pad": torch.zeros(2, h, dtype=torch.bool)})
    assert torch.isfinite(loss)


def test_every_config_says_what_it_is_sized_for():
    for name in TASKS:
        cfg = TrainConfig.from_json(CONFIGS / f"{name}.json")
        assert cfg.about, name
        assert cfg.sized_for == ("cpu" if name.endswith("_cpu") or name == "toy_lowdim" else "gpu"), name
