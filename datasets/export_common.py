"""What every exporter of a replay buffer does first: open it, refuse an existing output, pick the keys."""

from __future__ import annotations

import os
from pathlib import Path

from lfm_policy.datasets.buffer_lifecycle import exists_message
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.errors import DataError

#: Prefix of the data keys that keep a ``next_obs`` that is not a shift of ``obs`` (robomimic import).
NEXT_OBS_PREFIX = "next_obs."


def open_for_export(in_zarr: str | os.PathLike, out: Path, overwrite: bool) -> ReplayBuffer:
    """The buffer to export, opened read-only.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        DataError: The buffer has no episodes.

    """
    if out.exists() and not overwrite:
        raise FileExistsError(exists_message(out))
    buf = ReplayBuffer.open(in_zarr)
    if buf.n_episodes == 0:
        raise DataError(f"{in_zarr}: the buffer has no episodes to export")
    return buf


def export_keys(buf: ReplayBuffer, where: str | os.PathLike) -> tuple[str, list[str]]:
    """The action key and observation keys an exporter writes (see :func:`export_robomimic`).

    Raises:
        DataError: No action key, a schema obs key missing from ``data/``, or no observation keys.

    """
    schema = buf.attrs.get("schema") or {}
    action_key = schema.get("action_key", "action")
    if action_key not in buf.keys:
        raise DataError(f"{where}: missing action key {action_key!r}; available keys: {buf.keys}")
    reserved = {action_key, "reward", "done", "sim_state"}
    obs_keys = list(schema.get("obs_keys") or [k for k in buf.keys
                                               if k not in reserved and not k.startswith(NEXT_OBS_PREFIX)])
    for key in obs_keys:
        if key not in buf.keys:
            raise DataError(f"{where}: attrs schema lists obs key {key!r}, which is not in data/")
    if not obs_keys:
        raise DataError(f"{where}: no observation keys to export (keys: {buf.keys})")
    return action_key, obs_keys
