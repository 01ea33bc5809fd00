"""``lfm-policy eval --env-from DATASET``: rebuild the environment a dataset was made in.

Readable sources:

* a robomimic HDF5 file: its ``data.attrs["env_args"]`` (robomimic env metadata) is passed as
  ``env_meta=`` to the robosuite factory of task ``robosuite/<env_name>``. Files written by
  ``lfm-policy collect --format robomimic`` also carry ``data.attrs["lfm_policy_collect"]`` (task and
  env options), which are used as for a zarr store;
* a zarr store made by ``lfm-policy collect``: its ``task``, ``env_kwargs`` and (robosuite)
  ``env_meta`` attrs;
* a zarr store imported from robomimic (``lfm-policy data import-robomimic``): its ``env_meta``.

Images in robomimic's own files were rendered by robosuite's default renderer, so for an image policy
the env is made with ``render_settings="default"`` (unless the options name one): the fast settings
change ~5 % of the pixels (README, "Meta-World and robosuite").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lfm_policy.errors import DataError, LfmPolicyError

ROBOSUITE_ENV_TYPE = 1  # robomimic.envs.env_base.EnvType.ROBOSUITE_TYPE


@dataclasses.dataclass
class DatasetEnv:
    """The environment a dataset records.

    Attributes:
        path: The dataset path as given.
        format: ``"robomimic_hdf5"`` or ``"zarr"``.
        task: Registered task name (from the dataset's ``task`` attr, or ``robosuite/<env_name>``).
        env_kwargs: Options for the task's env factory (``env_meta`` included for robosuite).
        robomimic_frames: The dataset's images were rendered by robomimic's tools (not by this package).

    """

    path: str
    format: str
    task: str
    env_kwargs: dict[str, Any]
    robomimic_frames: bool


def _task_from_env_meta(path: Path, meta: dict[str, Any]) -> str:
    from lfm_policy.envs.registry import list_tasks

    if not isinstance(meta.get("env_kwargs"), dict) or "env_name" not in meta:
        raise DataError(f"{path}: env metadata lacks 'env_name'/'env_kwargs' (not robomimic env_args)")
    if meta.get("type") != ROBOSUITE_ENV_TYPE:
        raise DataError(f"{path}: env metadata is of robomimic env type {meta.get('type')!r} "
                        f"({meta['env_name']!r}); only robosuite (type {ROBOSUITE_ENV_TYPE}) envs can be rebuilt")
    task = f"robosuite/{meta['env_name']}"
    if task not in list_tasks("robosuite"):
        raise DataError(f"{path}: env metadata names robosuite env {meta['env_name']!r}, which is not a registered "
                        f"task (known: {', '.join(list_tasks('robosuite'))})")
    return task


def _from_attrs(path: Path, fmt: str, attrs: dict[str, Any], robomimic_frames: bool) -> DatasetEnv:
    meta = attrs.get("env_meta") or None
    task = attrs.get("task")
    meta_task = _task_from_env_meta(path, meta) if meta is not None else None
    if task is None and meta_task is None:
        raise DataError(f"{path}: no environment metadata (neither a 'task' attr nor robomimic env_meta/env_args); "
                        "evaluate with --task instead of --env-from")
    from lfm_policy.envs.registry import DETOUR_TASKS

    same_scene = task == meta_task or DETOUR_TASKS.get(task or "", ("",))[0] == meta_task  # a variant of it
    if task is not None and meta_task is not None and not same_scene:
        raise DataError(f"{path}: attr task {task!r} disagrees with its env_meta, which is {meta_task!r}")
    kwargs = dict(attrs.get("env_kwargs") or {})
    if not isinstance(kwargs, dict):
        raise DataError(f"{path}: attr 'env_kwargs' must be a JSON object")
    if meta is not None:
        kwargs["env_meta"] = meta
    return DatasetEnv(str(path), fmt, task or meta_task, kwargs, robomimic_frames)


def read_dataset_env(path: str | Path) -> DatasetEnv:
    """Read the environment metadata of a robomimic HDF5 file or a zarr replay buffer.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        DataError: Unreadable, no environment metadata, or metadata of an env that cannot be rebuilt.

    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--env-from {path}: no such file or directory")
    if path.is_dir():
        from lfm_policy.datasets.replay_buffer import ReplayBuffer

        buf = ReplayBuffer.open(path)
        try:
            attrs = dict(buf.attrs)
        finally:
            buf.close()
        source = attrs.get("source") if isinstance(attrs.get("source"), dict) else {}
        robomimic_frames = source.get("format") == "robomimic_hdf5" and not source.get("collected_by")
        return _from_attrs(path, "zarr", attrs, robomimic_frames)
    import h5py

    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile

    with RobomimicFile(path) as f:
        meta = f.env_meta
    with h5py.File(path, "r") as f:
        raw = f["data"].attrs.get("lfm_policy_collect")
    collected: dict[str, Any] = {}
    if raw is not None:
        try:
            collected = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: data.attrs['lfm_policy_collect'] is not valid JSON ({e})") from None
    attrs = {k: collected[k] for k in ("task", "env_kwargs") if k in collected}
    return _from_attrs(path, "robomimic_hdf5", {**attrs, "env_meta": meta or None}, raw is None)


def resolve_env(dataset: DatasetEnv, task: str | None, images: bool,
                env_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The task and env kwargs to evaluate with: the dataset's, checked against ``--task``.

    Args:
        dataset: What :func:`read_dataset_env` read.
        task: ``--task`` (None: the dataset's).
        images: Whether the env is made with camera observations.
        env_args: ``--env-arg`` options; they override the dataset's.

    Raises:
        LfmPolicyError: ``--task`` names another task than the dataset was made in.

    """
    if task is not None and task != dataset.task:
        raise LfmPolicyError(f"--task {task} disagrees with --env-from {dataset.path}, which was made in "
                             f"{dataset.task}; drop --task or use another dataset")
    kwargs = {**dataset.env_kwargs, **env_args}
    if images and dataset.robomimic_frames and "env_meta" in kwargs:
        kwargs.setdefault("render_settings", "default")  # robomimic's stored frames: robosuite's renderer
    return dataset.task, kwargs
