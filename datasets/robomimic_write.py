"""Write robomimic's HDF5 layout (see :mod:`lfm_policy.datasets.robomimic_hdf5`), atomically.

Each episode may carry its demo name (``"name"``, of the form ``demo_<i>``); episodes without one are
numbered by position (``demo_0``, ``demo_1``, ...). ``mask/<filter>`` lists the names written.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lfm_policy.datasets.episode import check_episode, check_key_name
from lfm_policy.datasets.robomimic_hdf5 import DEMO_RE, TOP_KEYS
from lfm_policy.errors import DataError


def write_robomimic_hdf5(path: str | os.PathLike, episodes: Iterable[Mapping[str, Any]], *,
                         env_args: Mapping[str, Any], filters: Mapping[str, Sequence[int]] | None = None,
                         compress: bool = True) -> int:
    """Write episodes as a robomimic HDF5 file (atomically: a temporary file renamed on success).

    Args:
        path: Output file (replaced if it exists).
        episodes: Dicts ``{"obs": {key: (T, ...)}, "actions": (T, Da), "rewards": (T,), "dones": (T,)}``
            with optional ``"states"`` (T, S), ``"next_obs"`` (same keys as ``obs``), ``"model_file"``
            (str) and ``"name"`` (``demo_<i>``); optional entries may also be ``None``. Episodes without
            a name are written as ``demo_<position>`` (``demo_0``, ``demo_1``, ...).
        env_args: Environment metadata stored as JSON in ``data.attrs["env_args"]``.
        filters: ``{name: [episode indices]}`` written as ``mask/<name>`` (lists of the demo names).
        compress: gzip the observation arrays (as robomimic's ``--compress``).

    Returns:
        The number of episodes written.

    Raises:
        DataError: A malformed episode (names the file, the episode index and the key), a bad or
            duplicate demo name, or a filter index out of range; nothing is left at ``path`` (an
            existing file is kept unchanged).

    """
    path = Path(path)
    try:
        env_json = json.dumps(dict(env_args), indent=4)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: env_args must be JSON-serializable ({e})") from e
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            total = 0
            names: list[str] = []
            for i, ep in enumerate(episodes):
                where = f"{path}: episode {i}"
                name = ep.get("name") if isinstance(ep, Mapping) else None
                name = f"demo_{i}" if name is None else str(name)
                if not DEMO_RE.match(name):
                    raise DataError(f"{where}: demo name {name!r} is not of the form demo_<i>")
                if name in data:
                    raise DataError(f"{where}: demo name {name!r} is used twice")
                total += _write_demo(data, name, ep, where, compress)
                names.append(name)
            n = len(names)
            data.attrs["total"] = total
            data.attrs["env_args"] = env_json
            for name, indices in (filters or {}).items():
                check_key_name(name, f"{path}: filters")
                bad = [i for i in indices if not 0 <= int(i) < n]
                if bad:
                    raise DataError(f"{path}: filter {name!r} refers to episode {bad[0]}, but only {n} were written")
                f.create_dataset(f"mask/{name}", data=np.array([names[int(i)] for i in indices], dtype="S"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _write_demo(data: h5py.Group, name: str, ep: Mapping[str, Any], where: str, compress: bool) -> int:
    ep = {k: v for k, v in ep.items() if k != "name" and not (v is None and k in ("states", "next_obs", "model_file"))}
    for key in ("obs", "actions", "rewards", "dones"):
        if key not in ep:
            raise DataError(f"{where}: missing key {key!r}")
    unknown = sorted(set(ep) - {"obs", "next_obs", "actions", "rewards", "dones", "states", "model_file"})
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r}")
    flat: dict[str, Any] = {k: ep[k] for k in TOP_KEYS if k in ep}
    for group in ("obs", "next_obs"):
        obs = ep.get(group)
        if obs is None and group == "next_obs":
            continue
        if not isinstance(obs, Mapping) or not obs:
            raise DataError(f"{where}: {group!r} must be a non-empty dict of arrays")
        for k, v in obs.items():
            flat[f"{group}/{check_key_name(k, where)}"] = v
    if "next_obs" in ep and set(ep["next_obs"]) != set(ep["obs"]):
        raise DataError(f"{where}: 'next_obs' keys {sorted(ep['next_obs'])} differ from 'obs' keys {sorted(ep['obs'])}")
    for k in ("actions", "rewards", "dones"):
        expected = 2 if k == "actions" else 1
        if np.ndim(flat[k]) != expected:
            raise DataError(f"{where}: key {k!r} must have {expected} dimension(s), got shape {np.shape(flat[k])}")
    flat = check_episode(flat, where, check_names=False)
    grp = data.create_group(name)
    for key, arr in flat.items():
        opts = {"compression": "gzip"} if compress and key.startswith(("obs/", "next_obs/")) else {}
        grp.create_dataset(key, data=arr, **opts)
    length = len(flat["actions"])
    grp.attrs["num_samples"] = length
    if ep.get("model_file") is not None:
        grp.attrs["model_file"] = str(ep["model_file"])
    return length
