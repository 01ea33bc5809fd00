"""Expert rollouts, in this process or in worker processes, in a deterministic seed order.

An episode seeded with ``s`` resets the env with ``reset(seed=s)`` and the expert with
``reset(seed=s)`` (when its ``reset`` takes a seed), so its content depends only on the task, the
env options and ``s`` — not on which process ran it or what ran before. With operators
(:attr:`EnvRecipe.operators`) the episode's operator is drawn from ``s`` too and wraps the expert
(:class:`~lfm_policy.envs.operators.OperatorExpert`, its perturbations seeded from ``s``).

Workers are separate processes started with ``forkserver`` (``spawn`` where that is unavailable).
Each creates its own environment, hence its own simulator and GL context; nothing with GL state
crosses a fork (the fork server itself never imports a simulator).

An episode ends at the first step whose ``info["is_success"]`` is True, when the env terminates or
truncates, or after ``max_episode_steps`` steps.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import multiprocessing as mp
import multiprocessing.util
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lfm_policy.envs.operators import OperatorExpert, choose_operator, get_profile, gripper_dims_for
from lfm_policy.envs.registry import reset_expert
from lfm_policy.errors import LfmPolicyError


@dataclasses.dataclass(frozen=True)
class EnvRecipe:
    """How each process builds its env and expert (picklable, sent to the workers).

    Attributes:
        task: Registered task name.
        images: Record camera observations.
        env_kwargs: Extra keyword arguments for the task's env factory (e.g. ``image_size``).
        plugins: Modules imported first (they may register custom tasks).
        record_states: Record ``env.get_state()`` before each action and the model XML per episode.
        expert_options: Keyword arguments for the task's expert factory (e.g. ``("modes", ("left",))``),
            passed to :func:`lfm_policy.envs.registry.make_expert` only when non-empty.
        operators: ``(name, weight)`` pairs of built-in :mod:`~lfm_policy.envs.operators` profiles; when
            set, each episode's operator is drawn from its seed and wraps the expert for that episode.

    """

    task: str
    images: bool = False
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    plugins: tuple[str, ...] = ()
    record_states: bool = False
    expert_options: tuple[tuple[str, Any], ...] = ()
    operators: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass
class Episode:
    """One rollout. T is the number of steps (actions).

    Attributes:
        seed: Seed of ``env.reset`` and of the expert.
        obs: ``{key: (T, ...)}`` observations before each action (float32 low-dim, uint8 images).
        actions: float32 (T, Da).
        rewards: float32 (T,).
        dones: uint8 (T,), 1 on the last step when it succeeded or terminated.
        success: ``info["is_success"]`` of the last step.
        mode: ``info["mode"]`` of the last step, when the task reports one.
        operator: Name of the simulated operator (:mod:`~lfm_policy.envs.operators`), if any.
        states: float64 (T, S) simulator states before each action (``record_states`` only).
        model_file: The model XML at episode start (``record_states`` and the env has ``model_xml``).
        env_meta: ``env.env_meta`` (robomimic env_args) when the env has one.
        final_obs: ``{key: (...)}`` the observation after the last action (robomimic's last ``next_obs``).
        cpu_seconds: CPU time (all threads of the rolling-out process) spent on this episode.

    """

    seed: int
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    success: bool
    mode: str | None = None
    states: np.ndarray | None = None
    model_file: str | None = None
    env_meta: dict | None = None
    final_obs: dict[str, np.ndarray] | None = None
    cpu_seconds: float = 0.0
    operator: str | None = None

    @property
    def length(self) -> int:
        """Number of steps T."""
        return int(self.actions.shape[0])


def rollout_episode(env: Any, expert: Any, seed: int, max_steps: int, *, record_states: bool = False) -> Episode:
    """Roll out ``expert`` in ``env`` for one episode seeded with ``seed``.

    Args:
        env: Environment following the registry conventions.
        expert: Object with ``reset([seed=])`` and ``act(obs) -> action``; its ``operator`` attribute,
            when it has one (an :class:`~lfm_policy.envs.operators.OperatorExpert`), becomes the episode's.
        seed: Seed for ``env.reset`` and the expert.
        max_steps: Hard limit on the number of steps (> 0).
        record_states: Record ``env.get_state()`` before each action and the model XML.

    """
    if max_steps <= 0:
        raise LfmPolicyError(f"max_steps must be positive, got {max_steps}")
    cpu_start = time.process_time()
    obs, info = env.reset(seed=seed)
    reset_expert(expert, seed)
    model_file = None
    if record_states:
        if not hasattr(env, "get_state"):
            raise LfmPolicyError(f"{type(env).__name__} has no get_state(); cannot record simulator states")
        xml = getattr(env, "model_xml", None)
        model_file = xml() if callable(xml) else xml
    obs_steps: dict[str, list[np.ndarray]] = {k: [] for k in obs}
    actions, rewards, dones, states = [], [], [], []
    success = False
    for _ in range(max_steps):
        if record_states:
            states.append(np.array(env.get_state(), dtype=np.float64))
        action = np.asarray(expert.act(obs), dtype=np.float32).reshape(-1)
        for k, v in obs.items():
            obs_steps[k].append(np.array(v))  # copy: renderers may reuse their buffers
        obs, reward, terminated, truncated, info = env.step(action)
        success = bool(info.get("is_success", False))
        actions.append(action)
        rewards.append(reward)
        dones.append(success or terminated)
        if success or terminated or truncated:
            break
    env_meta = getattr(env, "env_meta", None)
    return Episode(
        seed=seed,
        obs={k: np.stack(v) for k, v in obs_steps.items()},
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        dones=np.asarray(dones, np.uint8),
        success=success,
        mode=info.get("mode"),
        states=np.stack(states) if record_states else None,
        model_file=model_file,
        env_meta=dict(env_meta) if env_meta is not None else None,
        final_obs={k: np.array(v) for k, v in obs.items()},
        cpu_seconds=time.process_time() - cpu_start,
        operator=getattr(expert, "operator", None),
    )


class _Roller:
    """Env + expert of one process (the main one or a worker)."""

    def __init__(self, recipe: EnvRecipe) -> None:
        from lfm_policy.envs import registry

        for module in recipe.plugins:
            importlib.import_module(module)
        self.recipe = recipe
        self.env = registry.make_env(recipe.task, images=recipe.images, **dict(recipe.env_kwargs))
        try:
            self.expert = self._make_expert(registry)
            self.operators = dict(recipe.operators)
            self.gripper_dims = gripper_dims_for(recipe.task)
            space = getattr(self.env, "action_space", None)
            self.action_bounds = (getattr(space, "low", None), getattr(space, "high", None))
            spec_steps = registry.get_task_spec(recipe.task).max_episode_steps
            self.max_steps = int(getattr(self.env, "max_episode_steps", None) or spec_steps or 0)
            if self.max_steps <= 0:
                raise LfmPolicyError(f"task {recipe.task!r} does not define max_episode_steps")
        except BaseException:
            self.env.close()
            raise

    def _make_expert(self, registry: Any) -> Any:
        options = dict(self.recipe.expert_options)
        if not options:
            return registry.make_expert(self.recipe.task, self.env)
        try:
            return registry.make_expert(self.recipe.task, self.env, **options)
        except LfmPolicyError as e:
            given = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v!r}" for k, v in options.items())
            raise LfmPolicyError(f"expert option(s) {given}: {e}") from e

    def expert_for(self, seed: int) -> Any:
        """The expert of the episode seeded with ``seed`` (wrapped in its operator, when operators are set)."""
        if not self.operators:
            return self.expert
        name = choose_operator(self.operators, seed)
        low, high = self.action_bounds
        return OperatorExpert(self.expert, get_profile(name), gripper_dims=self.gripper_dims, action_low=low,
                              action_high=high)

    def run(self, seed: int) -> Episode:
        return rollout_episode(self.env, self.expert_for(seed), seed, self.max_steps,
                               record_states=self.recipe.record_states)

    def close(self) -> None:
        self.env.close()


_WORKER: dict[str, Any] = {}


def _worker_init(recipe: EnvRecipe) -> None:
    try:
        roller = _Roller(recipe)
    except Exception as e:  # noqa: BLE001  (re-raised in the parent through _worker_run)
        _WORKER["error"] = e
        return
    _WORKER["roller"] = roller
    multiprocessing.util.Finalize(None, roller.close, exitpriority=10)


def _worker_run(seed: int) -> Episode:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return _WORKER["roller"].run(seed)


def _mp_context() -> mp.context.BaseContext:
    """``forkserver`` (its server preloads this module, so workers start in milliseconds), else ``spawn``.

    The server process imports this module (numpy, torch-level imports), never a simulator or GL, so
    the forked workers start clean and create their own simulator and GL context.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def iter_episodes(recipe: EnvRecipe, seeds: Iterable[int], *, workers: int = 1) -> Iterator[Episode]:
    """Yield one episode per seed, in the order of ``seeds``.

    With ``workers > 1`` the episodes run in worker processes, at most ``2 * workers`` ahead of the
    consumer; closing the generator early cancels the rest.

    Args:
        recipe: What each process builds.
        seeds: Episode seeds.
        workers: Worker processes (1: run in this process).

    Raises:
        LfmPolicyError: From a worker (e.g. the env cannot be created), or when a worker died.

    """
    if workers <= 1:
        roller = _Roller(recipe)
        try:
            for s in seeds:
                yield roller.run(s)
        finally:
            roller.close()
        return
    it = iter(seeds)
    pool = cf.ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_worker_init, initargs=(recipe,))
    pending: list[cf.Future] = []
    try:
        pending = [pool.submit(_worker_run, s) for _, s in zip(range(2 * workers), it)]
        while pending:
            try:
                episode = pending.pop(0).result()
            except cf.process.BrokenProcessPool as e:
                raise LfmPolicyError(
                    f"a collection worker died ({e}); when calling this from a script, put the call under "
                    "`if __name__ == '__main__':` (workers re-import the main module)"
                ) from e
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_worker_run, nxt))
            yield episode
    finally:
        if pending:  # closed early: do not wait for episodes nobody will read
            _terminate_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Stop the worker processes now (their unfinished episodes are discarded)."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
