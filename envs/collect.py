"""Demonstration collection: roll out a task's scripted expert and write the episodes.

Attempt ``i`` of a collection with base seed ``S`` uses seed ``S + i`` (see
:mod:`lfm_policy.envs.rollout`), so the output depends only on the task, the options and ``S`` — not
on the number of worker processes. By default only successful episodes are kept: attempts continue
until ``n_episodes`` successes or ``max_attempts`` attempts.

Outputs:

* ``zarr`` — a :class:`lfm_policy.datasets.replay_buffer.ReplayBuffer` with one array per observation
  key plus ``action`` float32 (T, Da); root attrs ``task``, ``seeds`` (of the written episodes, in
  order), ``n_discarded``, ``discarded_seeds``, ``modes`` (counts, when the task reports modes),
  ``operators`` (counts, with ``operators``), ``filters`` (below), ``env_meta`` (when the env has one)
  and the options; per-episode attrs ``seed``, ``success``, ``mode``, ``operator``.
* ``robomimic`` — robomimic's HDF5 layout (``env_args``, ``states``, ``model_file``, ``next_obs``), for
  tasks whose env has ``env_meta`` and ``get_state`` (robosuite); the collection attrs are stored as
  JSON in ``data.attrs["lfm_policy_collect"]``.

Filter keys (root attr ``filters`` = ``{name: [episode indices]}``, robomimic's ``mask/<name>`` in an
exported file): one per operator present (``better``, ``okay``, ...) and one per mode present
(``mode_<mode>``, e.g. ``mode_left``). Train on one with ``data.filter_key`` (``better``, or a union
``better+okay``).

With ``operators`` (``{name: weight}`` of built-in :mod:`~lfm_policy.envs.operators` profiles) the
operator of attempt ``i`` is drawn from its seed, so it too does not depend on the worker count; with
``modes`` the expert chooses only among those modes (tasks whose expert takes ``modes``, e.g. toy).

Each episode also keeps its final observation (the one after the last action), so ``next_obs`` in an
exported robomimic file is exact. Both outputs are built in a staging replay buffer next to the target
(``<OUT>.collect.tmp``) and renamed or exported into place only when complete, so an interrupted
collection never leaves a half-written dataset at the target path; ``resume=True`` continues an
interrupted one (:mod:`lfm_policy.envs.collect_output`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lfm_policy.config import Config, ConfigError, check
from lfm_policy.envs.operators import check_operator_weights
from lfm_policy.envs.rollout import EnvRecipe, Episode, iter_episodes
from lfm_policy.errors import DataError, LfmPolicyError

OnEpisode = Callable[[Episode, bool, int, int], None]


@dataclasses.dataclass
class CollectConfig(Config):
    """What to collect.

    Attributes:
        task: Registered task name (``lfm-policy tasks``).
        n_episodes: Episodes to write (successful ones unless ``keep_failed``).
        seed: Base seed; attempt ``i`` uses seed ``seed + i``.
        images: Record camera observations.
        workers: Worker processes (1 = collect in this process).
        keep_failed: Keep failed episodes too (then exactly ``n_episodes`` attempts are made).
        max_attempts: Give up after this many attempts (default ``2 * n_episodes + 10``).
        env_kwargs: Extra keyword arguments for the task's env factory (e.g. ``image_size``).
        plugins: Modules to import (in every process) before the task is resolved; they may call
            :func:`lfm_policy.envs.registry.register_task`.
        modes: Modes the expert may choose from (e.g. ``("left",)``), passed to the task's expert
            factory; None: the expert's default (all modes).
        operators: ``{name: weight}`` of built-in operator profiles
            (:data:`lfm_policy.envs.operators.PROFILES`); each attempt's operator is drawn from its seed
            with these weights. None: the plain expert (episodes have no ``operator``).

    """

    task: str = "toy/point-obstacle"
    n_episodes: int = 10
    seed: int = 0
    images: bool = False
    workers: int = 1
    keep_failed: bool = False
    max_attempts: int | None = None
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    modes: tuple[str, ...] | None = None
    operators: dict[str, float] | None = None

    def __post_init__(self) -> None:
        check(self.n_episodes > 0, "n_episodes", f"must be positive, got {self.n_episodes}")
        if self.modes is not None:
            self.modes = tuple(self.modes)
            check(bool(self.modes) and all(isinstance(m, str) and m for m in self.modes), "modes",
                  f"must be a non-empty list of mode names, got {list(self.modes)}")
        if self.operators is not None:
            try:
                self.operators = check_operator_weights(self.operators, "operators")
            except LfmPolicyError as e:
                raise ConfigError(str(e)) from None
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        if self.max_attempts is not None:
            check(self.max_attempts >= self.n_episodes, "max_attempts", "must be >= n_episodes")

    @property
    def attempts(self) -> int:
        """Maximum number of episodes rolled out."""
        if self.keep_failed:
            return self.n_episodes
        return self.max_attempts if self.max_attempts is not None else 2 * self.n_episodes + 10

    def recipe(self, record_states: bool = False) -> EnvRecipe:
        """Return the env/expert recipe sent to each rollout process."""
        return EnvRecipe(self.task, self.images, tuple(sorted(self.env_kwargs.items())), self.plugins, record_states,
                         expert_options=(("modes", self.modes),) if self.modes is not None else (),
                         operators=tuple(sorted((self.operators or {}).items())))


@dataclasses.dataclass
class CollectResult:
    """Summary of a collection.

    Attributes:
        path: Output path.
        n_kept: Episodes written.
        n_discarded: Failed episodes dropped.
        seeds: Seed of each written episode, in order.
        discarded_seeds: Seeds of the dropped episodes.
        n_steps: Total steps written.
        seconds: Wall time of the whole collection (worker start, rollouts, writing).
        modes: Count of ``info["mode"]`` over the written episodes (empty if the task has none).
        rollout_wait_seconds: Part of ``seconds`` spent waiting for episodes (the rest is writing).
        rollout_cpu_seconds: CPU time of the rollouts (all episodes, summed over processes).
        n_resumed: Episodes that an interrupted earlier run had written (``resume=True``).
        operators: Count of operators over the written episodes (empty without ``operators``).
        filters: Filter keys of the output, ``{name: [episode indices]}`` (see the module docstring).

    """

    path: Path
    n_kept: int
    n_discarded: int
    seeds: list[int]
    discarded_seeds: list[int]
    n_steps: int
    seconds: float
    modes: dict[str, int]
    rollout_wait_seconds: float = 0.0
    rollout_cpu_seconds: float = 0.0
    n_resumed: int = 0
    operators: dict[str, int] = dataclasses.field(default_factory=dict)
    filters: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def episodes_per_s(self) -> float:
        """Rolled-out episodes (kept + discarded) per second of wall time."""
        return (self.n_kept + self.n_discarded) / max(self.seconds, 1e-9)


@dataclasses.dataclass
class _Tally:
    seeds: list[int] = dataclasses.field(default_factory=list)
    discarded: list[int] = dataclasses.field(default_factory=list)
    modes: Counter = dataclasses.field(default_factory=Counter)
    operators: Counter = dataclasses.field(default_factory=Counter)
    episode_modes: list[str | None] = dataclasses.field(default_factory=list)  # per written episode
    episode_operators: list[str | None] = dataclasses.field(default_factory=list)
    n_steps: int = 0
    env_meta: dict | None = None
    wait_s: float = 0.0
    cpu_s: float = 0.0
    resumed: int = 0


def _kept_episodes(
    cfg: CollectConfig, recipe: EnvRecipe, tally: _Tally, on_episode: OnEpisode | None, start_seed: int
) -> Iterator[Episode]:
    """Yield the episodes to write (in seed order, from ``start_seed``) and count the rest in ``tally``."""
    episodes = iter_episodes(recipe, range(start_seed, cfg.seed + cfg.attempts), workers=cfg.workers)
    try:
        while len(tally.seeds) < cfg.n_episodes:
            t0 = time.perf_counter()
            ep = next(episodes, None)
            tally.wait_s += time.perf_counter() - t0
            if ep is None:
                return
            tally.cpu_s += ep.cpu_seconds
            keep = ep.success or cfg.keep_failed
            if keep:
                tally.seeds.append(ep.seed)
                tally.n_steps += ep.length
                tally.env_meta = tally.env_meta or ep.env_meta
                mode = None if ep.mode is None else str(ep.mode)
                tally.episode_modes.append(mode)
                tally.episode_operators.append(ep.operator)
                if mode is not None:
                    tally.modes[mode] += 1
                if ep.operator is not None:
                    tally.operators[ep.operator] += 1
            else:
                tally.discarded.append(ep.seed)
            if on_episode is not None:
                on_episode(ep, keep, len(tally.seeds), len(tally.discarded))
            if keep:
                yield ep
    finally:
        episodes.close()


def collect(
    cfg: CollectConfig,
    out: str | os.PathLike,
    *,
    fmt: str = "zarr",
    overwrite: bool = False,
    resume: bool = False,
    on_episode: OnEpisode | None = None,
) -> CollectResult:
    """Collect expert demonstrations and write them to ``out``.

    With ``cfg.workers > 1`` call this under ``if __name__ == "__main__":`` in scripts (the worker
    processes re-import the main module).

    Args:
        cfg: What to collect.
        out: Output path: a zarr replay buffer (``fmt="zarr"``) or a robomimic HDF5 file
            (``fmt="robomimic"``, needs an env with ``get_state`` and ``env_meta``, e.g. robosuite).
        fmt: ``"zarr"`` or ``"robomimic"``.
        overwrite: Replace an existing ``out`` (and discard an interrupted collection of it).
        resume: Continue an interrupted collection of ``out`` (see :mod:`lfm_policy.envs.collect_output`);
            ``cfg.n_episodes`` may differ from the interrupted run's, the other settings may not.
        on_episode: Called as ``on_episode(episode, kept, n_kept, n_discarded)`` after each rollout.

    Returns:
        The summary; ``n_kept`` may fall short of ``cfg.n_episodes`` if attempts ran out.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        DataError: No episode could be kept (nothing is written).
        LfmPolicyError: Unknown task, bad format, a task without what the format needs, or an
            interrupted collection of ``out`` that is neither resumed nor overwritten.

    """
    from lfm_policy.envs import registry
    from lfm_policy.envs.collect_output import open_staging, publish, staging_path, write_episode

    if fmt not in ("zarr", "robomimic"):
        raise LfmPolicyError(f"format must be 'zarr' or 'robomimic', got {fmt!r}")
    for module in cfg.plugins:
        importlib.import_module(module)
    registry.task_family(cfg.task)  # unknown task → clear error before any worker starts
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        done = " (the collection is complete: nothing to resume)" if resume else ""
        raise FileExistsError(f"{out} exists{done}; pass overwrite / --overwrite to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise LfmPolicyError(f"output folder {out.parent} is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)  # as `mkdir -p`: `--out data/new/task.zarr` just works
    start = time.perf_counter()
    buffer, done = open_staging(out, cfg, fmt=fmt, overwrite=overwrite, resume=resume)
    tally = _Tally(seeds=done.seeds, discarded=done.discarded, modes=Counter(done.modes),
                   operators=Counter(done.operators), episode_modes=done.episode_modes,
                   episode_operators=done.episode_operators, n_steps=done.n_steps, env_meta=done.env_meta,
                   resumed=len(done.seeds))
    episodes = _kept_episodes(cfg, cfg.recipe(record_states=fmt == "robomimic"), tally, on_episode, done.next_seed)
    try:
        for ep in episodes:
            if fmt == "robomimic" and ep.env_meta is None:
                raise LfmPolicyError(f"task {cfg.task}: --format robomimic needs an env with env_meta (robomimic "
                                     "env_args), e.g. a robosuite task")
            write_episode(buffer, ep, fmt=fmt)
    except BaseException as e:
        if buffer.n_episodes == 0:
            buffer.discard()
        else:  # keep what is committed for --resume
            buffer.release()
            e.add_note(f"lfm-policy collect: {buffer.n_episodes} episode(s) are kept in {staging_path(out)}; "
                       f"continue with --resume")
        raise
    finally:
        episodes.close()
    if not tally.seeds:
        buffer.discard()
        _check_some_kept(cfg, tally, out)
    attrs = _attrs(cfg, tally)
    publish(buffer, out, cfg, fmt=fmt, attrs=attrs, overwrite=overwrite)
    return CollectResult(
        out, len(tally.seeds), len(tally.discarded), tally.seeds, tally.discarded, tally.n_steps,
        time.perf_counter() - start, dict(sorted(tally.modes.items())), tally.wait_s, tally.cpu_s,
        tally.resumed, dict(sorted(tally.operators.items())), attrs.get("filters", {}),
    )  # fmt: skip


def _check_some_kept(cfg: CollectConfig, tally: _Tally, out: Path) -> None:
    if not tally.seeds:
        n = len(tally.discarded)
        raise DataError(
            f"task {cfg.task}: no successful episode in {n} attempts (seeds {cfg.seed}..{cfg.seed + n - 1}); "
            f"nothing written to {out}"
        )


def _attrs(cfg: CollectConfig, tally: _Tally) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "task": cfg.task,
        "seeds": list(tally.seeds),
        "n_discarded": len(tally.discarded),
        "discarded_seeds": list(tally.discarded),
        "base_seed": cfg.seed,
        "images": cfg.images,
        "keep_failed": cfg.keep_failed,
        "collector": "lfm-policy collect",
    }
    if cfg.env_kwargs:
        attrs["env_kwargs"] = dict(cfg.env_kwargs)
    if tally.modes:
        attrs["modes"] = dict(sorted(tally.modes.items()))
    if tally.operators:
        attrs["operators"] = dict(sorted(tally.operators.items()))
    filters = episode_filters(tally.episode_operators, tally.episode_modes)
    if filters:
        attrs["filters"] = filters
    if tally.env_meta is not None:
        attrs["env_meta"] = tally.env_meta
    return attrs


def episode_filters(operators: list[str | None], modes: list[str | None]) -> dict[str, list[int]]:
    """Filter keys of the written episodes: one per operator (its name) and per mode (``mode_<mode>``).

    Args:
        operators: Each written episode's operator (None: none).
        modes: Each written episode's mode (None: none).

    Raises:
        DataError: A name that cannot be a filter key (see :func:`~lfm_policy.datasets.episode.check_key_name`).

    """
    from lfm_policy.datasets.episode import check_key_name

    out: dict[str, list[int]] = {}
    for prefix, values in (("", operators), ("mode_", modes)):
        for name in sorted({v for v in values if v is not None}):
            key = check_key_name(f"{prefix}{name}", "collect: filter keys")
            out[key] = [i for i, v in enumerate(values) if v == name]
    return out
