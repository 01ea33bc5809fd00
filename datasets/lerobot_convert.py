"""LeRobot folders ⇄ replay buffers (``lfm-policy data import-lerobot`` / ``export-lerobot``).

Key names (LeRobot → buffer; export maps back, and an imported buffer keeps the original names):

* ``action`` → ``action``; ``next.reward`` → ``reward``, ``next.done`` → ``done`` (squeezed to (T,))
* ``observation.images.<cam>`` (and ``observation.image``) → ``<cam>_image`` (``image``): uint8
  (T, H, W, 3), what the image encoder reads
* ``observation.<name>`` → ``<name>`` (``observation.state`` → ``state``)

so the shipped configs' ``data.obs_keys`` (``state``, ``agentview_image``, ...) apply unchanged. The
episode's LeRobot index and tasks go in its episode attrs (``lerobot_episode``, ``tasks``); the
buffer's attrs keep the source (format version, fps, robot type, the name map). Both directions write
all-or-nothing: a temporary directory renamed into place once everything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lfm_policy.datasets.buffer_lifecycle import exists_message
from lfm_policy.datasets.lerobot_format import LeRobotFolder
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.errors import DataError

_SPECIAL = {"action": "action", "next.reward": "reward", "next.done": "done"}
_SQUEEZE = ("reward", "done")


def buffer_key(name: str) -> str:
    """The replay-buffer key of a LeRobot feature name."""
    if name in _SPECIAL:
        return _SPECIAL[name]
    if name.startswith("observation.images."):
        return name[len("observation.images."):].replace(".", "_") + "_image"
    if name == "observation.image":
        return "image"
    if name.startswith("observation."):
        return name[len("observation."):].replace(".", "_")
    return name.replace(".", "_")


def lerobot_name(key: str, is_image: bool) -> str:
    """The LeRobot feature name of a buffer key (the inverse of :func:`buffer_key` for our own keys)."""
    inverse = {v: k for k, v in _SPECIAL.items()}
    if key in inverse:
        return inverse[key]
    if is_image:
        return "observation.images." + (key[: -len("_image")] if key.endswith("_image") else key)
    return "observation." + key


def import_lerobot(folder: str | os.PathLike, out_zarr: str | os.PathLike, *, episodes: Sequence[int] | None = None,
                   keys: Sequence[str] | None = None, overwrite: bool = False,
                   on_episode: Callable[[int, int], None] | None = None) -> ReplayBuffer:
    """Convert a LeRobot folder (v3.0, v2.1, v2.0) into a replay buffer.

    Args:
        folder: The LeRobot dataset folder (holding ``meta/info.json``).
        out_zarr: Output buffer (nothing appears there unless the whole import succeeds).
        episodes: LeRobot episode indices to import (default: all).
        keys: LeRobot features to keep (default: every feature but the index columns); ``action`` is
            always kept.
        overwrite: Replace an existing ``out_zarr``.
        on_episode: Progress callback ``on_episode(done, total)``.

    Returns:
        The new buffer, opened read-only.

    Raises:
        DataError: A malformed folder (see :class:`LeRobotFolder`), an unknown feature or episode, no
            ``action`` feature, two features that map to one buffer key.
        FileExistsError: ``out_zarr`` exists and ``overwrite`` is False.

    """
    if Path(out_zarr).exists() and not overwrite:
        raise FileExistsError(exists_message(Path(out_zarr)))
    src = LeRobotFolder(folder)
    if "action" not in src.features:
        raise DataError(f"{src.root / 'meta' / 'info.json'}: no 'action' feature (features: {', '.join(src.features)})")
    names = list(src.data_keys if keys is None else keys)
    unknown = [k for k in names if k not in src.data_keys]
    if unknown:
        raise DataError(f"{src.root}: unknown feature {unknown[0]!r} (features: {', '.join(src.data_keys)})")
    if "action" not in names:
        names.append("action")
    mapping = {n: buffer_key(n) for n in names}
    seen: dict[str, str] = {}
    for n, k in mapping.items():
        if k in seen:
            raise DataError(f"{src.root}: features {seen[k]!r} and {n!r} both map to buffer key {k!r}; keep one "
                            "with --keys")
        seen[k] = n
    chosen = [src.episode(i) for i in episodes] if episodes is not None else src.episodes
    if not chosen:
        raise DataError(f"{src.root}: no episodes to import")
    attrs = {
        "schema": {"obs_keys": [mapping[n] for n in names if mapping[n] not in ("action", "reward", "done")],
                   "action_key": "action"},
        "source": {"format": f"lerobot_{src.version}", "folder": src.root.name, "fps": src.fps,
                   "robot_type": src.info.get("robot_type"), "names": {mapping[n]: n for n in names},
                   "features": {n: src.features[n] for n in names}},
        "fps": src.fps,
    }
    with ReplayBuffer.create(out_zarr, attrs=attrs, overwrite=overwrite, atomic=True) as buf:
        for j, ep in enumerate(chosen):
            data = src.read_episode(ep.index, names)
            out: dict[str, Any] = {}
            for n, arr in data.items():
                k = mapping[n]
                out[k] = arr.reshape(len(arr)) if k in _SQUEEZE and arr.ndim == 2 and arr.shape[1] == 1 else arr
            buf.add_episode(out, episode_attrs={"lerobot_episode": ep.index, "tasks": ep.tasks})
            if on_episode is not None:
                on_episode(j + 1, len(chosen))
    return ReplayBuffer.open(out_zarr)
