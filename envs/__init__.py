"""Simulated tasks, scripted experts and demonstration collection.

Installed as ``lfm_policy.envs``. Simulators (mujoco, robosuite, metaworld) load inside the submodules.
"""
