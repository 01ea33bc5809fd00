"""Read and write robomimic's HDF5 demonstration format.

Layout (as written by robomimic's ``dataset_states_to_obs.py``)::

    data                      attrs: total (steps), env_args (JSON env metadata)
    data/demo_<i>             attrs: num_samples, model_file (robosuite xml, optional)
        obs/<key>             (T, ...) low-dim float64 or uint8 (T, H, W, C) images
        next_obs/<key>        (T, ...) optional
        actions (T, Da)  rewards (T,)  dones (T,)  states (T, S) optional
    mask/<filter>             array of demo names (bytes), e.g. mask/train, mask/valid

Demos are always ordered by their number (``demo_2`` before ``demo_10``). The writer
(``write_robomimic_hdf5``, in :mod:`lfm_policy.datasets.robomimic_write`) and the conversions to and from
the zarr replay buffer (``import_robomimic``, ``export_robomimic``, in
:mod:`lfm_policy.datasets.robomimic_convert`) are re-exported here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lfm_policy.datasets.episode import check_episode, is_image
from lfm_policy.errors import DataError

DEMO_RE = re.compile(r"^demo_(\d+)$")
TOP_KEYS = ("actions", "rewards", "dones", "states")


class RobomimicFile:
    """A robomimic HDF5 file opened for reading (context manager).

    Besides the nested episodes of :meth:`episodes`, it offers the flat episode-source view used by
    ``compute_stats`` and ``data view``: keys ``actions``, ``rewards``, ``dones``, ``states`` and
    ``obs/<key>``.

    Args:
        path: The HDF5 file.
        check_finite: Reject NaN/Inf in float arrays when reading (``False`` lets ``data info`` report them).

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: Not a readable HDF5 file, no ``data`` group, malformed ``env_args``.

    """

    action_key = "actions"

    def __init__(self, path: str | os.PathLike, *, check_finite: bool = True):
        self.path = Path(path)
        self.check_finite = check_finite
        self.where = str(self.path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 file ({e})") from e
        try:
            if "data" not in self._f or not isinstance(self._f["data"], h5py.Group):
                raise DataError(f"{self.path}: not a robomimic file (no 'data' group)")
            names = list(self._f["data"].keys())
        except OSError as e:
            self._f.close()
            raise DataError(f"{self.path}: cannot read the 'data' group ({e})") from e
        except DataError:
            self._f.close()
            raise
        bad = [n for n in names if not DEMO_RE.match(n)]
        if bad:
            self._f.close()
            raise DataError(f"{self.path}: unexpected group data/{bad[0]} (demos must be named demo_<i>)")
        self.demos = sorted(names, key=lambda n: int(n[5:]))
        self._lengths: dict[str, int] = {}

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> RobomimicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata
    @property
    def env_meta(self) -> dict[str, Any]:
        """The parsed ``data.attrs["env_args"]`` (``{}`` when the attribute is absent)."""
        raw = self._f["data"].attrs.get("env_args")
        if raw is None:
            return {}
        try:
            meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except json.JSONDecodeError as e:
            raise DataError(f"{self.path}: data.attrs['env_args'] is not valid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise DataError(f"{self.path}: data.attrs['env_args'] must be a JSON object")
        return meta

    @property
    def extra_attrs(self) -> dict[str, Any]:
        """``data`` attrs other than ``env_args``/``total`` (JSON strings parsed, e.g. ``lfm_policy_collect``)."""
        out: dict[str, Any] = {}
        for key, raw in self._f["data"].attrs.items():
            if key in ("env_args", "total"):
                continue
            value = raw.decode() if isinstance(raw, bytes) else raw
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            if isinstance(value, (np.ndarray, np.generic)):
                value = value.tolist()
            out[key] = value
        return out

    @property
    def filter_keys(self) -> dict[str, list[str]]:
        """``{filter_name: [demo names]}`` from the ``mask`` group."""
        if "mask" not in self._f:
            return {}
        out = {}
        for name, ds in self._f["mask"].items():
            out[name] = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(ds[()]).ravel()]
        return out

    def demo_names(self, filter_key: str | None = None) -> list[str]:
        """Demo names in numeric order, optionally only those listed in ``mask/<filter_key>``."""
        if filter_key is None:
            return list(self.demos)
        masks = self.filter_keys
        if filter_key not in masks:
            raise DataError(f"{self.path}: unknown filter key {filter_key!r}; available: {sorted(masks)}")
        chosen = set(masks[filter_key])
        missing = sorted(chosen - set(self.demos))
        if missing:
            raise DataError(f"{self.path}: mask/{filter_key} lists {missing[0]!r}, which is not in data/")
        return [d for d in self.demos if d in chosen]

    @property
    def obs_keys(self) -> list[str]:
        """Observation keys of the first demo."""
        if not self.demos:
            return []
        grp = self._f[f"data/{self.demos[0]}"]
        return sorted(grp["obs"].keys()) if "obs" in grp else []

    @property
    def next_obs_keys(self) -> list[str]:
        """``next_obs`` keys of the first demo (``[]`` when the file has none)."""
        if not self.demos:
            return []
        grp = self._f[f"data/{self.demos[0]}"]
        return sorted(grp["next_obs"].keys()) if "next_obs" in grp else []

    def check_obs_keys(self, obs_keys: Sequence[str] | None) -> list[str]:
        """Return ``obs_keys`` (default: all) after checking that the first demo has them."""
        available = self.obs_keys
        if obs_keys is None:
            return available
        for key in obs_keys:
            if key not in available:
                demo = self.demos[0] if self.demos else "-"
                raise DataError(f"{self.path}: {demo}: obs key {key!r} not found; available: {available}")
        return list(obs_keys)

    # ------------------------------------------------------------------ episodes
    def read_episode(self, name: str, obs_keys: Sequence[str] | None = None, *,
                     next_obs: bool = False) -> dict[str, Any]:
        """One validated demo as a dict.

        Keys: ``name``, ``obs`` (``{key: (T, ...)}``), ``actions``, and when present ``rewards``,
        ``dones``, ``states``, ``model_file``; with ``next_obs``, also ``next_obs`` (``{key: (T, ...)}``
        for the chosen keys the demo has in its ``next_obs`` group; absent when it has none).

        Raises:
            DataError: Missing demo/key, length mismatch, empty demo, NaN/Inf, unreadable data.

        """
        where = f"{self.path}: {name}"
        if name not in self.demos:
            raise DataError(f"{where}: no such demo")
        try:
            return self._read_episode(name, where, obs_keys, next_obs)
        except (OSError, KeyError, RuntimeError) as e:  # h5py's errors on damaged files
            raise DataError(f"{where}: cannot read ({type(e).__name__}: {e})") from e

    def _read_episode(self, name: str, where: str, obs_keys: Sequence[str] | None,
                      next_obs: bool) -> dict[str, Any]:
        grp = self._f[f"data/{name}"]
        if "actions" not in grp:
            raise DataError(f"{where}: missing key 'actions'")
        obs_grp = grp["obs"] if "obs" in grp else {}
        keys = sorted(obs_grp.keys()) if obs_keys is None else list(obs_keys)
        flat: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in obs_grp:
                raise DataError(f"{where}: obs key {key!r} not found; available: {sorted(obs_grp.keys())}")
            flat[f"obs/{key}"] = _read(obs_grp[key], where, f"obs/{key}")
        next_grp = grp["next_obs"] if next_obs and "next_obs" in grp else {}
        next_keys = [k for k in keys if k in next_grp]
        for key in next_keys:
            flat[f"next_obs/{key}"] = _read(next_grp[key], where, f"next_obs/{key}")
        for key in TOP_KEYS:
            if key in grp:
                flat[key] = _read(grp[key], where, key)
        flat = check_episode(flat, where, check_names=False, finite_keys=None if self.check_finite else ())
        n = grp.attrs.get("num_samples")
        if n is not None and int(n) != len(flat["actions"]):
            raise DataError(f"{where}: attrs num_samples={int(n)} but 'actions' has {len(flat['actions'])} steps")
        out: dict[str, Any] = {"name": name, "obs": {k: flat[f"obs/{k}"] for k in keys}}
        if next_keys:
            out["next_obs"] = {k: flat[f"next_obs/{k}"] for k in next_keys}
        out.update({k: flat[k] for k in TOP_KEYS if k in flat})
        if "model_file" in grp.attrs:
            mf = grp.attrs["model_file"]
            out["model_file"] = mf.decode() if isinstance(mf, bytes) else str(mf)
        return out

    def episodes(self, obs_keys: Sequence[str] | None = None,
                 filter_key: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield :meth:`read_episode` for every demo (of ``filter_key``) in numeric order."""
        for name in self.demo_names(filter_key):
            yield self.read_episode(name, obs_keys)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.episodes()

    def __len__(self) -> int:
        return len(self.demos)

    # ------------------------------------------------------------------ flat episode-source view
    @property
    def n_episodes(self) -> int:
        """Number of demos."""
        return len(self.demos)

    @property
    def keys(self) -> list[str]:
        """Flat keys of the first demo: ``actions``, ``rewards``, ..., ``obs/<key>``."""
        if not self.demos:
            return []
        grp = self._f[f"data/{self.demos[0]}"]
        return [k for k in TOP_KEYS if k in grp] + [f"obs/{k}" for k in self.obs_keys]

    def key_spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(per_step_shape, dtype)`` of a flat key in the first demo."""
        if key not in self.keys:
            raise DataError(f"{self.path}: unknown key {key!r}; available keys: {self.keys}")
        ds = self._f[f"data/{self.demos[0]}/{key}"]
        return tuple(ds.shape[1:]), np.dtype(ds.dtype)

    @property
    def image_keys(self) -> list[str]:
        """Flat keys of uint8 (T, H, W, C) observations."""
        return [k for k in self.keys if is_image((0, *self.key_spec(k)[0]), self.key_spec(k)[1])]

    @property
    def episode_lengths(self) -> np.ndarray:
        """(n_episodes,) length of each demo (its ``actions``)."""
        return np.array([self._length(d) for d in self.demos], dtype=np.int64)

    def _length(self, name: str) -> int:
        if name not in self._lengths:
            grp = self._f[f"data/{name}"]
            if "actions" not in grp:
                raise DataError(f"{self.path}: {name}: missing key 'actions'")
            self._lengths[name] = int(grp["actions"].shape[0])
        return self._lengths[name]

    def get_episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Demo ``i`` (numeric order) as flat ``{key: (T, ...)}``."""
        name = self.demos[i]
        keys = self.keys if keys is None else list(keys)
        obs = [k[4:] for k in keys if k.startswith("obs/")]
        ep = self.read_episode(name, obs)
        flat = {f"obs/{k}": v for k, v in ep["obs"].items()}
        flat.update({k: ep[k] for k in TOP_KEYS if k in ep})
        missing = [k for k in keys if k not in flat]
        if missing:
            raise DataError(f"{self.path}: {name}: missing key {missing[0]!r}")
        return {k: flat[k] for k in keys}


def read_robomimic_hdf5(path: str | os.PathLike, obs_keys: Sequence[str] | None = None,
                        filter_key: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield the validated episodes of a robomimic file in numeric demo order (see :class:`RobomimicFile`)."""
    with RobomimicFile(path) as f:
        keys = f.check_obs_keys(obs_keys)
        yield from f.episodes(keys, filter_key)


def _read(ds: h5py.Dataset, where: str, key: str) -> np.ndarray:
    try:
        return np.asarray(ds[()])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{where}: key {key!r}: cannot read stored data ({e})") from e


def __getattr__(name: str) -> Any:
    """Re-export the writer and the conversions lazily (those modules import this one)."""
    if name == "write_robomimic_hdf5":
        from lfm_policy.datasets import robomimic_write

        return robomimic_write.write_robomimic_hdf5
    if name in ("import_robomimic", "export_robomimic"):
        from lfm_policy.datasets import robomimic_convert

        return getattr(robomimic_convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
