"""Test-only tasks for the eval tests, registered on import (``--import eval_crash_plugin``).

``test/crashy-toy``: the toy env, except that ``step`` raises after 3 steps when ``seed % 3 == 0``.
``test/dying-toy``: the toy env, except that the process exits hard in ``step`` when ``seed % 4 == 1``
(only ever run in worker processes).
"""

import os

from lfm_policy.envs import registry
from lfm_policy.envs.toy import PointObstacleEnv, PointObstacleExpert


class CrashyEnv(PointObstacleEnv):
    def reset(self, *, seed=None, options=None):
        self._crash = seed is not None and seed % 3 == 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self._crash and self._steps >= 3:
            raise RuntimeError("simulated simulator crash")
        return super().step(action)


class DyingEnv(PointObstacleEnv):
    def reset(self, *, seed=None, options=None):
        self._die = seed is not None and seed % 4 == 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self._die and self._steps >= 2:
            os._exit(3)
        return super().step(action)


for _name, _cls in [("test/crashy-toy", CrashyEnv), ("test/dying-toy", DyingEnv)]:
    if _name not in registry.list_tasks():
        registry.register_task(_name, lambda images=False, seed=None, _cls=_cls, **kw: _cls(images=images),
                               PointObstacleExpert, max_episode_steps=80, description="eval test task",
                               family="test")
