"""Vectorized, reproducible policy rollouts.

:class:`Evaluator` keeps ``n_envs`` environments alive (gymnasium ``AsyncVectorEnv`` worker
processes started with ``forkserver``/``spawn``; ``n_envs=1`` runs in this process through
``SyncVectorEnv``) and evaluates policies on them with batched inference::

    with Evaluator(EvalConfig(task="toy/point-obstacle", n_envs=2)) as ev:
        results = ev.run(policy, episodes=50, seed_start=100000)
    results.summary()["success_rate"]
    results.environment["fingerprint"]  # how the env was built, as it reports it (.environment)

Paired seeds: episode i is reset with ``seed_start + i`` and its sampling noise comes from a torch
generator seeded with the same number, so its initial state (and, up to float rounding of batched
matrix products, its whole rollout) does not depend on ``n_envs`` or on which worker ran it
(``batch_inference=False`` removes the rounding difference at the cost of one policy call per env).

Robustness: an exception in an env ends that episode with ``error`` set (the others go on); a worker
process that dies fails the episode it was running, the envs are recreated and the episodes of the
other workers restart from their seeds; ``KeyboardInterrupt``
returns the episodes finished so far with ``interrupted=True``; a non-finite action from the policy
raises :class:`LfmPolicyError` naming the episode, seed and step.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lfm_policy.config import Config, check
from lfm_policy.errors import LfmPolicyError
from lfm_policy.eval.environment import REGISTRY_DEFAULT, environment_record
from lfm_policy.eval.metrics import EpisodeResult, EvalResults

CONTEXTS = ("forkserver", "spawn")


@dataclass
class EvalConfig(Config):
    """Which environments an :class:`Evaluator` runs.

    Attributes:
        task: Registered task name (``lfm-policy tasks`` lists them).
        n_envs: Parallel environments; 1 runs in this process, more run in worker processes.
        images: Make the envs with camera observations.
        env_kwargs: Extra keyword arguments for the task's env factory.
        plugins: Modules imported (in every process) before the env is made, e.g. to register tasks.
        context: Multiprocessing start method of the workers (``forkserver`` or ``spawn``).
        batch_inference: One policy call for all active envs (fast). Batched matrix products round
            slightly differently from single ones, so long chaotic episodes may differ between ``n_envs``
            settings; False runs one call per env, making episodes bit-identical for any ``n_envs``.
        env_source: Where ``task``/``env_kwargs`` came from, recorded with the results: ``"registry
            default"`` or the ``--env-from`` dataset path.

    """

    task: str = "toy/point-obstacle"
    n_envs: int = 1
    images: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    context: str = "forkserver"
    batch_inference: bool = True
    env_source: str = REGISTRY_DEFAULT

    def __post_init__(self) -> None:
        self.plugins = tuple(self.plugins)
        check(self.n_envs >= 1, "n_envs", f"must be ≥ 1, got {self.n_envs}")
        check(self.context in CONTEXTS, "context", f"choose from {CONTEXTS}")


class _EnvFactory:
    """Picklable env constructor run inside each worker (sets up headless GL before any simulator)."""

    def __init__(self, config: EvalConfig, n_obs_steps: int, n_action_steps: int):
        self.config, self.n_obs_steps, self.n_action_steps = config, n_obs_steps, n_action_steps

    def __call__(self):
        from lfm_policy.envs.registry import make_env
        from lfm_policy.envs.robomimic_compat import setup_headless_gl
        from lfm_policy.eval.wrappers import MultiStepWrapper

        setup_headless_gl()  # before mujoco loads; also imports triton before any Mesa context exists
        for module in self.config.plugins:
            importlib.import_module(module)
        env = make_env(self.config.task, images=self.config.images, **self.config.env_kwargs)
        return MultiStepWrapper(env, self.n_obs_steps, self.n_action_steps, catch_errors=True)


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _step_generator(steps: list[tuple[int, int]]) -> torch.Generator:
    """A CPU generator seeded by (episode seed, env step) of every episode in one policy call."""
    seed = 0
    for episode_seed, step in steps:
        seed = (seed * 1_000_003 + episode_seed * 100_003 + step) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class Evaluator:
    """Environments kept alive across evaluations (the trainer calls :meth:`run` every K steps).

    Args:
        config: Task and parallelism.

    """

    def __init__(self, config: EvalConfig):
        self.config = config
        self._envs = None
        self._shape: tuple[int, int] | None = None
        self._environment: dict[str, Any] | None = None
        for module in config.plugins:
            importlib.import_module(module)

    # ------------------------------------------------------------------------------------------
    def _make_envs(self, n_obs_steps: int, n_action_steps: int):
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode

        from lfm_policy.envs.robomimic_compat import setup_headless_gl

        setup_headless_gl()  # AsyncVectorEnv builds one env here to read the spaces
        fns = [_EnvFactory(self.config, n_obs_steps, n_action_steps)] * self.config.n_envs
        if self.config.n_envs == 1:
            return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
        return gym.vector.AsyncVectorEnv(fns, context=self.config.context, autoreset_mode=AutoresetMode.DISABLED)

    def _ensure_envs(self, n_obs_steps: int, n_action_steps: int):
        if self._envs is None or self._shape != (n_obs_steps, n_action_steps):
            self._close_envs()
            self._envs = self._make_envs(n_obs_steps, n_action_steps)
            self._shape = (n_obs_steps, n_action_steps)
            if self._environment is None:  # what the env reports, from inside its worker
                c = self.config
                self._environment = environment_record(c.task, c.images, c.env_kwargs, c.env_source,
                                                       self._envs.call("describe_env")[0])
        return self._envs

    @property
    def environment(self) -> dict[str, Any] | None:
        """The environment record (None until the envs were made by a :meth:`run`)."""
        return self._environment

    def _close_envs(self, terminate: bool = False) -> None:
        """Close the envs; ``terminate``: kill the workers (a broken or interrupted vector env)."""
        envs, self._envs = self._envs, None
        if envs is None:
            return
        procs = getattr(envs, "processes", None)
        if terminate and procs is not None:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            for proc in procs:
                proc.join(timeout=2)
            for pipe in getattr(envs, "parent_pipes", []):
                if pipe is not None:
                    pipe.close()
            envs.closed = True  # nothing left for AsyncVectorEnv.__del__ to close
            return
        try:
            envs.close()
        except Exception:  # noqa: BLE001  (already broken: nothing more to release)
            pass

    def _dead_workers(self) -> dict[int, int | None]:
        """{env index: exit code} of the worker processes that have exited."""
        procs = getattr(self._envs, "processes", None) or []
        for proc in procs:
            proc.join(timeout=0.5 / max(1, len(procs)))
        return {j: proc.exitcode for j, proc in enumerate(procs) if not proc.is_alive()}

    def close(self) -> None:
        """Close the environments (and stop the worker processes)."""
        self._close_envs()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def run(self, policy, episodes: int, seed_start: int = 100000, *, solver=None, videos: int = 0,
            video_dir: str | Path | None = None, on_episode: Callable[[EpisodeResult], None] | None = None
            ) -> EvalResults:
        """Roll ``policy`` out for ``episodes`` episodes seeded ``seed_start + i``.

        Args:
            policy: A :class:`lfm_policy.Policy` (its device is used for inference; left in eval mode).
            episodes: Number of episodes.
            seed_start: Seed of episode 0.
            solver: Sampling solver(s) passed to ``predict_action_chunk`` (None: the policy's own).
            videos: Record the first ``videos`` episodes (needs ``video_dir``).
            video_dir: Where ``episode_<i>_seed<seed>.mp4`` files go.
            on_episode: Called with each finished episode (e.g. a progress bar).

        Returns:
            The finished episodes (all of them unless interrupted) and the chunk latencies.

        Raises:
            LfmPolicyError: The policy produced a non-finite action (names episode, seed and step).

        """
        if episodes < 0:
            raise LfmPolicyError(f"episodes must be ≥ 0, got {episodes}")
        cfg = policy.config
        to, ta, horizon, da = cfg.n_obs_steps, cfg.n_action_steps, cfg.horizon, policy.spec.action_dim
        keys = list(policy.spec.obs_shapes)
        n = self.config.n_envs
        policy.eval()
        results = EvalResults(requested=episodes)
        record_below = seed_start + (videos if video_dir is not None else 0)
        slot_ep: list[int | None] = [None] * n
        slot_len = [0] * n
        gens: list[torch.Generator | None] = [None] * n
        pending: list[list] = [[] for _ in range(n)]  # video frames popped before their episode ended
        next_ep = 0
        retry: list[int] = []  # episodes to restart from their seed (their worker's sibling died)
        t_start = time.perf_counter()

        def finish(j: int, success: bool, ret: float, length: int, mode: Any, error: Any,
                   collision: Any = False) -> None:
            i = slot_ep[j]
            ep = EpisodeResult(index=i, seed=seed_start + i, success=bool(success) and error is None,
                               ret=float(ret), length=int(length), mode=_text(mode), error=_text(error),
                               collision=bool(collision))
            if ep.seed < record_below and error is None and self._envs is not None:
                # pop_frames runs in every env: keep the other slots' frames for their own episodes
                for k, popped in enumerate(self._envs.call("pop_frames")):
                    pending[k].extend(popped or [])
                frames, pending[j] = pending[j], []
                if frames:
                    from lfm_policy.eval.video import write_video

                    path = Path(video_dir) / f"episode_{i:04d}_seed{ep.seed}.mp4"
                    write_video(path, frames, success=ep.success)
                    ep.video = f"{Path(video_dir).name}/{path.name}"
            results.episodes.append(ep)
            slot_ep[j] = None
            pending[j] = []
            if on_episode is not None:
                on_episode(ep)

        def refill(obs: dict | None) -> dict | None:
            nonlocal next_ep
            mask = np.zeros(n, bool)
            seeds: list[int | None] = [None] * n
            for j in range(n):
                if slot_ep[j] is None and (retry or next_ep < episodes):
                    if retry:
                        i = retry.pop(0)
                    else:
                        i, next_ep = next_ep, next_ep + 1
                    slot_ep[j], slot_len[j] = i, 0
                    seeds[j] = seed_start + i
                    gens[j] = torch.Generator().manual_seed(seed_start + i)
                    mask[j] = True
            if not mask.any():
                return obs
            new_obs, info = self._envs.reset(seed=seeds, options={"reset_mask": mask,
                                                                  "record_below_seed": record_below})
            for j in np.flatnonzero(mask):  # reset failed inside the env: the episode is over
                if info.get("error") is not None and info["error"][j] is not None:
                    finish(j, False, 0.0, 0, None, info["error"][j])
            return new_obs

        try:
            self._ensure_envs(to, ta)
            obs = refill(None)
            while any(e is not None for e in slot_ep) or retry or next_ep < episodes:
                active = [j for j in range(n) if slot_ep[j] is not None]
                if not active:
                    obs = refill(obs)
                    continue
                batch = {k: torch.as_tensor(np.asarray(obs[k])[active]) for k in keys if k in obs}
                noise = torch.stack([torch.randn(horizon, da, generator=gens[j]) for j in active])
                # Samplers that draw fresh noise while they run (DDPM) take it from a generator seeded by the
                # episodes and steps of this call, never from the global RNG: paired across runs and rows.
                steps = [(seed_start + slot_ep[j], slot_len[j]) for j in active]
                t0 = time.perf_counter()
                noise = noise.to(policy.device)
                if self.config.batch_inference:
                    chunk = policy.predict_action_chunk(batch, noise=noise, solver=solver,
                                                        generator=_step_generator(steps))
                else:
                    chunk = torch.cat([policy.predict_action_chunk({k: v[b : b + 1] for k, v in batch.items()},
                                                                   noise=noise[b : b + 1], solver=solver,
                                                                   generator=_step_generator(steps[b : b + 1]))
                                       for b in range(len(active))])
                acts = policy.executable_actions(chunk).float().cpu().numpy()
                results.chunk_latency_s.append(time.perf_counter() - t0)
                results.batch_sizes.append(len(active))
                finite = np.isfinite(acts).all(axis=2)
                if not finite.all():
                    b, t = map(int, np.argwhere(~finite)[0])
                    i = slot_ep[active[b]]
                    raise LfmPolicyError(f"episode {i} (seed {seed_start + i}): the policy returned a non-finite "
                                         f"action for step {slot_len[active[b]] + t}")
                full = np.zeros((n, ta, da), np.float32)
                full[active] = acts
                try:
                    obs, _, term, trunc, info = self._envs.step(full)
                except (LfmPolicyError, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001  (a worker process died): fail its episode, restart
                    dead = self._dead_workers()
                    for j in active:
                        if dead and j not in dead:  # healthy sibling: rerun the episode from its seed
                            retry.append(slot_ep[j])
                            slot_ep[j] = None
                        else:
                            code = f" (exit code {dead[j]})" if j in dead else ""
                            finish(j, False, 0.0, slot_len[j], None,
                                   f"worker process died{code}: {type(e).__name__}: {e}".rstrip(": "))
                    retry.sort()
                    self._close_envs(terminate=True)
                    self._ensure_envs(to, ta)
                    obs = refill(None)
                    continue
                for j in active:
                    slot_len[j] = int(info["episode_length"][j])
                    if term[j] or trunc[j]:
                        finish(j, info["is_success"][j], info["episode_return"][j], slot_len[j],
                               info["mode"][j], info["error"][j], info["collision"][j])
                obs = refill(obs)
        except KeyboardInterrupt:
            results.interrupted = True
            self._close_envs(terminate=True)
        except BaseException:
            self._close_envs(terminate=True)
            raise
        finally:
            results.wall_s = time.perf_counter() - t_start
            results.episodes.sort(key=lambda e: e.index)
            results.environment = self._environment
        return results
