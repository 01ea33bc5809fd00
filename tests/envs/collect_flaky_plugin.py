"""Test-only tasks for the collect tests, registered on import (``--import collect_flaky_plugin``)."""

import numpy as np

from lfm_policy.envs import registry
from lfm_policy.envs.toy import PointObstacleEnv, PointObstacleExpert
from lfm_policy.errors import LfmPolicyError


class FlakyExpert(PointObstacleExpert):
    """The toy expert, except that it drives straight into the obstacle when ``seed % fail_every == 0``."""

    fail_every = 3

    def reset(self, seed=None):
        super().reset(seed)
        self.fail = seed is not None and seed % self.fail_every == 0

    def act(self, obs):
        return np.array([0.0, 1.0], np.float32) if self.fail else super().act(obs)


class AlwaysFailExpert(FlakyExpert):
    fail_every = 1


def _toy(images=False, seed=None, **kwargs):
    return PointObstacleEnv(images=images)


def _broken(images=False, seed=None, **kwargs):
    raise LfmPolicyError("test/broken: this env cannot be created")


for _name, _expert, _make in [
    ("test/flaky-toy", FlakyExpert, _toy),
    ("test/always-fail", AlwaysFailExpert, _toy),
    ("test/broken", FlakyExpert, _broken),
]:
    if _name not in registry.list_tasks():
        registry.register_task(_name, _make, _expert, max_episode_steps=80, description="test task", family="test")
