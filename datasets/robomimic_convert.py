"""Convert between robomimic HDF5 files and zarr replay buffers (``lfm-policy data import-robomimic`` etc.).

Key mapping (robomimic → replay buffer): ``obs/<key>`` → ``<key>``, ``actions`` → ``action``,
``rewards`` → ``reward``, ``dones`` → ``done``, ``states`` (MuJoCo simulator states) → ``sim_state``.
The buffer's attrs keep the environment metadata (``env_meta``, robomimic's ``env_args``), the
filter keys remapped to episode indices (``filters``), which keys are observations (``schema``) and
the source; each episode's attrs keep its demo name and robosuite ``model_file``.

``next_obs`` round-trips exactly. When every kept key's ``next_obs`` is its ``obs`` shifted by one
step (``next_obs[:-1] == obs[1:]``, what robomimic's ``dataset_states_to_obs.py`` writes), only the
last row is new: it is stored as the episode's *final observation* (``meta/final_obs/<key>``).
Otherwise each key's whole ``next_obs`` is kept as the data key ``next_obs.<key>`` (listed in
``attrs["schema"]["next_obs"]``). Export writes ``next_obs`` by default: the stored ``next_obs.<key>``
verbatim, else ``obs`` shifted by one step, whose last row is the final observation when the buffer
has one and the last observation repeated when it has not. Demo names are kept both ways. Both
directions write all-or-nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.datasets.buffer_lifecycle import exists_message
from lfm_policy.datasets.export_common import NEXT_OBS_PREFIX, export_keys, open_for_export
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.robomimic_hdf5 import DEMO_RE, RobomimicFile
from lfm_policy.datasets.robomimic_write import write_robomimic_hdf5
from lfm_policy.errors import DataError

#: robomimic top-level dataset → replay buffer key.
TOP_TO_BUFFER = {"actions": "action", "rewards": "reward", "dones": "done", "states": "sim_state"}


class _NotAShift(Exception):
    """A demo's next_obs is not its obs shifted by one step (import restarts keeping next_obs verbatim)."""


def _is_shift(obs: np.ndarray, nxt: np.ndarray) -> bool:
    return obs.dtype == nxt.dtype and obs.shape == nxt.shape and np.array_equal(obs[1:], nxt[:-1])


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
    if Path(out_zarr).exists() and not overwrite:
        raise FileExistsError(exists_message(Path(out_zarr)))
    with RobomimicFile(in_hdf5) as f:
        keys = f.check_obs_keys(obs_keys)
        reserved = set(TOP_TO_BUFFER.values())
        clash = sorted(k for k in keys if k in reserved or k.startswith(NEXT_OBS_PREFIX))
        if clash:
            raise DataError(f"{in_hdf5}: obs key {clash[0]!r} collides with a reserved buffer key "
                            f"{sorted(reserved)} or prefix {NEXT_OBS_PREFIX!r}; leave it out with --obs-keys")
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
        collected = f.extra_attrs.get("lfm_policy_collect")
        if isinstance(collected, dict):  # made by `lfm-policy collect`: keep its task and env options
            attrs["source"]["collected_by"] = collected.get("collector", "lfm-policy collect")
            attrs.update({k: collected[k] for k in ("task", "env_kwargs", "images") if k in collected})
        try:
            _import(f, out_zarr, names, keys, attrs, overwrite, on_episode, verbatim=False)
        except _NotAShift:
            _import(f, out_zarr, names, keys, attrs, overwrite, on_episode, verbatim=True)
    return ReplayBuffer.open(out_zarr)


def _import(f: RobomimicFile, out_zarr: str | os.PathLike, names: list[str], keys: list[str], attrs: dict[str, Any],
            overwrite: bool, on_episode: Callable[[int, int], None] | None, *, verbatim: bool) -> None:
    """One import pass; raises _NotAShift (nothing written) when ``not verbatim`` and a next_obs is no shift."""
    next_keys = [k for k in keys if k in f.next_obs_keys]
    if verbatim:
        attrs = {**attrs, "schema": {**attrs["schema"], "next_obs": {k: NEXT_OBS_PREFIX + k for k in next_keys}}}
    with ReplayBuffer.create(out_zarr, attrs=attrs, overwrite=overwrite, atomic=True) as buf:
        for i, name in enumerate(names):
            ep = f.read_episode(name, keys, next_obs=bool(next_keys))
            data = dict(ep["obs"])
            data.update({TOP_TO_BUFFER[k]: ep[k] for k in TOP_TO_BUFFER if k in ep})
            nxt = ep.get("next_obs", {})
            if sorted(nxt) != next_keys:
                raise DataError(f"{f.path}: {name}: next_obs keys {sorted(nxt)} differ from the first demo's "
                                f"{next_keys}")
            final = None
            if verbatim:
                data.update({NEXT_OBS_PREFIX + k: v for k, v in nxt.items()})
            elif nxt:
                if not all(_is_shift(ep["obs"][k], v) for k, v in nxt.items()):
                    raise _NotAShift(name)
                final = {k: v[-1] for k, v in nxt.items()}
            ep_attrs = {"demo": name}
            if "model_file" in ep:
                ep_attrs["model_file"] = ep["model_file"]
            buf.add_episode(data, final_obs=final, episode_attrs=ep_attrs)
            if on_episode is not None:
                on_episode(i + 1, len(names))


def export_robomimic(in_zarr: str | os.PathLike, out_hdf5: str | os.PathLike, *, overwrite: bool = False,
                     next_obs: bool = True, on_episode: Callable[[int, int], None] | None = None) -> int:
    """Write a replay buffer as a robomimic HDF5 file (atomically).

    Observation keys are ``attrs["schema"]["obs_keys"]`` when present, else every key other than
    ``action``/``reward``/``done``/``sim_state`` and ``next_obs.*``. Buffers without ``reward``/``done``
    get zero rewards and ``done = 1`` on each episode's last step; ``env_meta`` (``{}`` if absent)
    becomes ``env_args``. Demos keep the names recorded in the episodes' ``"demo"`` attrs when every
    episode has a distinct ``demo_<i>`` one (an imported file), else they are numbered ``demo_0..N-1``;
    ``mask/<filter>`` lists the same names.

    Args:
        in_zarr: Replay buffer directory.
        out_hdf5: Output file.
        overwrite: Replace an existing ``out_hdf5``.
        next_obs: Write ``next_obs`` (default): a stored ``next_obs.<key>`` as it is, else ``obs[t+1]``,
            whose last row is the episode's final observation when the buffer has one (exact) and the
            last observation repeated when it has not.
        on_episode: Progress callback ``on_episode(done, total)``.

    Returns:
        The number of episodes written.

    """
    out_hdf5 = Path(out_hdf5)
    buf = open_for_export(in_zarr, out_hdf5, overwrite)
    schema = buf.attrs.get("schema") or {}
    action_key, obs_keys = export_keys(buf, in_zarr)
    verbatim = {k: v for k, v in (schema.get("next_obs") or {}).items() if k in obs_keys}
    verbatim.update({k: NEXT_OBS_PREFIX + k for k in obs_keys if NEXT_OBS_PREFIX + k in buf.keys and k not in verbatim})
    for data_key in verbatim.values():
        if data_key not in buf.keys:
            raise DataError(f"{in_zarr}: attrs schema lists next_obs key {data_key!r}, which is not in data/")
    names = [buf.get_episode_attrs(i).get("demo") for i in range(buf.n_episodes)]
    keep_names = all(isinstance(n, str) and DEMO_RE.match(n) for n in names) and len(set(names)) == len(names)

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
            if keep_names:
                out["name"] = names[i]
            if "sim_state" in ep:
                out["states"] = ep["sim_state"]
            if next_obs:
                final = buf.get_final_obs(i) or {}
                out["next_obs"] = {k: ep[verbatim[k]] if k in verbatim else
                                   np.concatenate([ep[k][1:], (final[k] if k in final else ep[k][-1])[None]])
                                   for k in obs_keys}
            model_file = buf.get_episode_attrs(i).get("model_file")
            if model_file is not None:
                out["model_file"] = model_file
            yield out
            if on_episode is not None:
                on_episode(i + 1, buf.n_episodes)

    filters = {k: list(v) for k, v in (buf.attrs.get("filters") or {}).items()}
    return write_robomimic_hdf5(out_hdf5, episodes(), env_args=buf.attrs.get("env_meta") or {}, filters=filters)
