"""Convert between robomimic HDF5 files and zarr replay buffers (``lfm-policy data import-robomimic`` etc.).

Key mapping (robomimic → replay buffer): ``obs/<key>`` → ``<key>``, ``actions`` → ``action``,
``rewards`` → ``reward``, ``dones`` → ``done``, ``states`` (MuJoCo simulator states) → ``sim_state``.
The buffer's attrs keep the environment metadata (``env_meta``, robomimic's ``env_args``), the
filter keys remapped to episode indices (``filters``), which keys are observations (``schema``) and
the source; each episode's attrs keep its demo name and robosuite ``model_file``. Both directions
write all-or-nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile, write_robomimic_hdf5
from lfm_policy.errors import DataError

#: robomimic top-level dataset → replay buffer key.
TOP_TO_BUFFER = {"actions": "action", "rewards": "reward", "dones": "done", "states": "sim_state"}


def import_robomimic(in_hdf5: str | os.PathLike, out_zarr: str | os.PathLike,
                     obs_keys: Sequence[str] | None = None, filter_key: str | None = None, *,
                     overwrite: bool = False, on_episode: Callable[[int, int], None] | None = None) -> ReplayBuffer:
    """Convert a robomimic HDF5 file into a replay buffer.

    Args:
        in_hdf5: robomimic file (e.g. the output of robomimic's ``dataset_states_to_obs.py``).
        out_zarr: Output buffer directory (nothing appears there unless the conversion succeeds).
        obs_keys: Observation keys to keep (default: all of the first demo's).
        filter_key: Only convert the demos listed in ``mask/<filter_key>``.
        overwrite: Replace an existing ``out_zarr``.
        on_episode: Called as ``on_episode(done, total)`` after each episode (for progress bars).

    Returns:
        The new buffer, opened read-only.

    Raises:
        DataError: Unknown obs/filter key, a malformed demo (names file, demo and key), no demos, or an
            observation key that collides with ``action``/``reward``/``done``/``sim_state``.
        FileExistsError: ``out_zarr`` exists and ``overwrite`` is False.

    """
    with RobomimicFile(in_hdf5) as f:
        keys = f.check_obs_keys(obs_keys)
        clash = sorted(set(keys) & set(TOP_TO_BUFFER.values()))
        if clash:
            raise DataError(f"{in_hdf5}: obs key {clash[0]!r} collides with a reserved buffer key "
                            f"{sorted(TOP_TO_BUFFER.values())}; leave it out with --obs-keys")
        names = f.demo_names(filter_key)
        if not names:
            raise DataError(f"{in_hdf5}: no demos to import" + (f" in mask/{filter_key}" if filter_key else ""))
        index = {name: i for i, name in enumerate(names)}
        filters = {k: [index[d] for d in v if d in index] for k, v in f.filter_keys.items()}
        filters = {k: v for k, v in filters.items() if v}  # masks of demos left out vanish
        attrs = {
            "env_meta": f.env_meta,
            "filters": filters,
            "schema": {"obs_keys": keys, "action_key": "action"},
            "source": {"format": "robomimic_hdf5", "file": Path(in_hdf5).name, "filter_key": filter_key},
        }
        with ReplayBuffer.create(out_zarr, attrs=attrs, overwrite=overwrite, atomic=True) as buf:
            for i, name in enumerate(names):
                ep = f.read_episode(name, keys)
                data = dict(ep["obs"])
                data.update({TOP_TO_BUFFER[k]: ep[k] for k in TOP_TO_BUFFER if k in ep})
                ep_attrs = {"demo": name}
                if "model_file" in ep:
                    ep_attrs["model_file"] = ep["model_file"]
                buf.add_episode(data, episode_attrs=ep_attrs)
                if on_episode is not None:
                    on_episode(i + 1, len(names))
    return ReplayBuffer.open(out_zarr)


def export_robomimic(in_zarr: str | os.PathLike, out_hdf5: str | os.PathLike, *, overwrite: bool = False,
                     next_obs: bool = False, on_episode: Callable[[int, int], None] | None = None) -> int:
    """Write a replay buffer as a robomimic HDF5 file (atomically).

    Observation keys are ``attrs["schema"]["obs_keys"]`` when present, else every key other than
    ``action``/``reward``/``done``/``sim_state``. Buffers without ``reward``/``done`` get zero rewards and
    ``done = 1`` on each episode's last step; ``env_meta`` (``{}`` if absent) becomes ``env_args``.

    Args:
        in_zarr: Replay buffer directory.
        out_hdf5: Output file.
        overwrite: Replace an existing ``out_hdf5``.
        next_obs: Also write ``next_obs`` (the next step's observation; the last step repeats itself,
            since the observation after the final action is not stored in a replay buffer).
        on_episode: Progress callback ``on_episode(done, total)``.

    Returns:
        The number of episodes written.

    """
    out_hdf5 = Path(out_hdf5)
    if out_hdf5.exists() and not overwrite:
        raise FileExistsError(f"{out_hdf5} already exists (pass --overwrite to replace it)")
    buf = ReplayBuffer.open(in_zarr)
    if buf.n_episodes == 0:
        raise DataError(f"{in_zarr}: the buffer has no episodes to export")
    schema = buf.attrs.get("schema") or {}
    action_key = schema.get("action_key", "action")
    if action_key not in buf.keys:
        raise DataError(f"{in_zarr}: missing action key {action_key!r}; available keys: {buf.keys}")
    reserved = {action_key, "reward", "done", "sim_state"}
    obs_keys = list(schema.get("obs_keys") or [k for k in buf.keys if k not in reserved])
    for key in obs_keys:
        if key not in buf.keys:
            raise DataError(f"{in_zarr}: attrs schema lists obs key {key!r}, which is not in data/")
    if not obs_keys:
        raise DataError(f"{in_zarr}: no observation keys to export (keys: {buf.keys})")

    def episodes() -> Iterator[dict[str, Any]]:
        for i in range(buf.n_episodes):
            ep = buf.get_episode(i)
            actions = ep[action_key]
            if actions.ndim != 2 or actions.dtype.kind != "f":
                raise DataError(f"{in_zarr}: episode {i}: key {action_key!r} must be float (T, Da), got "
                                f"{actions.dtype} {actions.shape}")
            t = len(actions)
            dones = np.zeros(t, dtype=np.int64)
            dones[-1] = 1
            out: dict[str, Any] = {
                "obs": {k: ep[k] for k in obs_keys},
                "actions": actions,
                "rewards": ep["reward"] if "reward" in ep else np.zeros(t, dtype=np.float64),
                "dones": ep["done"] if "done" in ep else dones,
            }
            if "sim_state" in ep:
                out["states"] = ep["sim_state"]
            if next_obs:
                out["next_obs"] = {k: np.concatenate([ep[k][1:], ep[k][-1:]]) for k in obs_keys}
            model_file = buf.get_episode_attrs(i).get("model_file")
            if model_file is not None:
                out["model_file"] = model_file
            yield out
            if on_episode is not None:
                on_episode(i + 1, buf.n_episodes)

    filters = {k: list(v) for k, v in (buf.attrs.get("filters") or {}).items()}
    return write_robomimic_hdf5(out_hdf5, episodes(), env_args=buf.attrs.get("env_meta") or {}, filters=filters)
