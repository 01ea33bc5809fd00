"""Rollout evaluation: vectorized rollouts, metrics, reports and videos.

Installed as ``lfm_policy.eval``.
"""
