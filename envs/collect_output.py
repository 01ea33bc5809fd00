"""Where ``collect`` writes: a resumable staging replay buffer, published (zarr) or exported (robomimic).

Every collection is built in ``<OUT>.collect.tmp``, a replay buffer whose writer holds a lock on it
while it runs. When the collection is complete the buffer is renamed to ``OUT`` (zarr) or exported to
``OUT`` as a robomimic HDF5 file and removed. A killed collection leaves the staging buffer with every
episode committed so far; ``collect(..., resume=True)`` (``lfm-policy collect --resume``) continues it
with the next seed, so the result equals an uninterrupted run with the same settings (attempts run in
seed order and only their outcome decides what is kept). Without ``resume`` an interrupted collection
is never overwritten silently: the call fails and says how to continue or discard it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfm_policy.errors import LfmPolicyError

log = logging.getLogger(__name__)

#: CollectConfig fields that may change when a collection is resumed (how much, and how fast).
RESUMABLE = ("n_episodes", "max_attempts", "workers")


def staging_path(out: Path) -> Path:
    """``<OUT>.collect.tmp`` next to the output."""
    return out.with_name(f"{out.name}.collect.tmp")


@dataclass
class Resumed:
    """What an earlier, interrupted run of this collection had done."""

    seeds: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    operators: dict[str, int] = field(default_factory=dict)
    episode_modes: list[str | None] = field(default_factory=list)  # per committed episode, for the filters
    episode_operators: list[str | None] = field(default_factory=list)
    n_steps: int = 0
    env_meta: dict | None = None
    next_seed: int = 0


def open_staging(out: Path, cfg: Any, *, fmt: str, overwrite: bool, resume: bool) -> tuple[Any, Resumed]:
    """The staging buffer of ``out`` (new, or the interrupted one when ``resume``) and its progress.

    Raises:
        LfmPolicyError: Another live collection writes ``out``; an interrupted collection is there and
            neither ``resume`` nor ``overwrite`` was given; or the interrupted one used other settings.

    """
    from lfm_policy.datasets.replay_buffer import ReplayBuffer
    from lfm_policy.datasets.staging import remove_stale

    remove_stale(out)  # ``<OUT>.<hex>.tmp`` folders of dead writers (older versions staged there)
    _remove_stale_exports(out)
    staging = staging_path(out)
    if staging.exists() and ReplayBuffer.staging_locked(staging):
        raise LfmPolicyError(f"another lfm-policy collect is writing {out} (its folder {staging} is in use)")
    if staging.exists() and not resume:
        if not overwrite:
            n = ReplayBuffer.open(staging).n_episodes
            raise LfmPolicyError(f"an interrupted collection of {out} is in {staging} ({n} episodes): continue it "
                                 "with --resume, or start over with --overwrite")
        shutil.rmtree(staging)
    state = Resumed(next_seed=cfg.seed)
    if staging.exists():
        _check_same_collection(ReplayBuffer.open(staging), cfg, fmt, staging)
        buf = ReplayBuffer.resume(out, staging, overwrite=overwrite)
        _restore(buf, cfg, state)
        return buf, state
    attrs = {"task": cfg.task, "collect_config": _settings(cfg), "collect_format": fmt}
    try:
        return ReplayBuffer.create(out, attrs=attrs, overwrite=overwrite, atomic=True, staging=staging), state
    except FileExistsError as e:  # another collection created the staging folder since the checks above
        raise LfmPolicyError(f"another lfm-policy collect is writing {out} (its folder {staging} is in use)") from e


def _remove_stale_exports(out: Path) -> None:
    """Delete ``.<OUT>.<pid>.tmp`` files (an HDF5 export in progress) whose process is gone."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.tmp$")
    for candidate in out.parent.glob(f".{out.name}.*.tmp") if out.parent.is_dir() else []:
        match = pattern.match(candidate.name)
        if match and candidate.is_file() and not _alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            log.warning("%s: removed %s, left by an export that was killed", out, candidate)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _settings(cfg: Any) -> dict[str, Any]:
    """The config as recorded with the data (``workers`` does not change the output, so it is left out)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "workers"}


def _check_same_collection(buf: Any, cfg: Any, fmt: str, staging: Path) -> None:
    saved = dict(buf.attrs.get("collect_config") or {})
    want = _settings(cfg)
    diffs = [f"{k}: {saved.get(k)!r} there, {want[k]!r} now" for k in sorted(want)
             if k not in RESUMABLE and json.dumps(saved.get(k), sort_keys=True) != json.dumps(want[k], sort_keys=True)]
    if buf.attrs.get("collect_format", fmt) != fmt:
        diffs.append(f"format: {buf.attrs.get('collect_format')!r} there, {fmt!r} now")
    if diffs:
        raise LfmPolicyError(f"{staging}: the interrupted collection used other settings ({'; '.join(diffs)}); "
                             "resume it with the same ones, or start over with --overwrite")


def _restore(buf: Any, cfg: Any, state: Resumed) -> None:
    """Seeds, modes, operators and steps of the committed episodes; the attempts between them were discarded.

    The per-episode modes and operators are kept so that the published ``filters`` cover every episode.
    """
    for i in range(buf.n_episodes):
        attrs = buf.get_episode_attrs(i)
        state.seeds.append(int(attrs["seed"]))
        mode = None if attrs.get("mode") is None else str(attrs["mode"])
        operator = None if attrs.get("operator") is None else str(attrs["operator"])
        state.episode_modes.append(mode)
        state.episode_operators.append(operator)
        if mode is not None:
            state.modes[mode] = state.modes.get(mode, 0) + 1
        if operator is not None:
            state.operators[operator] = state.operators.get(operator, 0) + 1
    kept = set(state.seeds)
    last = state.seeds[-1] if state.seeds else cfg.seed - 1
    state.discarded = [s for s in range(cfg.seed, last + 1) if s not in kept]
    state.n_steps = buf.n_steps
    state.env_meta = buf.attrs.get("env_meta")
    state.next_seed = last + 1


def write_episode(buf: Any, ep: Any, *, fmt: str) -> None:
    """Append one kept episode (with its final observation; robomimic: rewards, dones, states, model)."""
    data = dict(ep.obs)
    reserved = {"action", "reward", "done", "sim_state"} if fmt == "robomimic" else {"action"}
    clash = sorted(reserved & set(data))
    if clash:
        raise LfmPolicyError(f"observation key {clash[0]!r} clashes with a buffer key of the same name")
    data["action"] = ep.actions
    attrs: dict[str, Any] = {"seed": ep.seed, "success": ep.success}
    if ep.mode is not None:
        attrs["mode"] = str(ep.mode)
    if getattr(ep, "operator", None) is not None:
        attrs["operator"] = str(ep.operator)
    if fmt == "robomimic":
        data.update(reward=ep.rewards, done=ep.dones, sim_state=ep.states)
        attrs["model_file"] = ep.model_file or ""
    if ep.env_meta is not None and "env_meta" not in buf.attrs:
        buf.attrs["env_meta"] = ep.env_meta  # known from the first episode on (a resumed run needs it)
    buf.add_episode(data, final_obs=ep.final_obs, episode_attrs=attrs)


def publish(buf: Any, out: Path, cfg: Any, *, fmt: str, attrs: dict[str, Any], overwrite: bool) -> None:
    """zarr: rename the staging buffer to ``out``; robomimic: export it to ``out``, then remove it."""
    buf.attrs.update({**attrs, "collect_config": _settings(cfg)})  # a resumed run may have asked for more
    if fmt == "zarr":
        buf.close()
        return
    import h5py

    from lfm_policy.datasets.robomimic_convert import export_robomimic

    obs_keys = sorted(k for k in buf.keys if k not in ("action", "reward", "done", "sim_state"))
    buf.attrs["schema"] = {"obs_keys": obs_keys, "action_key": "action"}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        export_robomimic(staging_path(out), tmp, overwrite=True)
        with h5py.File(tmp, "r+") as f:
            # the filters are the file's mask/<name> groups already
            f["data"].attrs["lfm_policy_collect"] = json.dumps({k: v for k, v in attrs.items() if k != "filters"})
        if overwrite and out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)  # a file is replaced atomically by os.replace, a folder is not
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    buf.discard()
