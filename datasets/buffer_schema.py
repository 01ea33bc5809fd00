"""Validation of an episode against a replay buffer's schema (keys, shapes, dtypes, final-observation keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lfm_policy.datasets.episode import cast_to
from lfm_policy.errors import DataError

if TYPE_CHECKING:
    from lfm_policy.datasets.replay_buffer import ReplayBuffer


def match_schema(buf: ReplayBuffer, episode: dict[str, np.ndarray], where: str,
                 chunks: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Return ``episode`` cast to the buffer's dtypes; raise DataError on other keys, shapes or chunks.

    The first episode (no keys yet) defines the schema: only its ``chunks`` are checked.
    """
    existing = buf.keys
    if not existing:
        for key, c in chunks.items():
            if key not in episode:
                raise DataError(f"{where}: chunks given for unknown key {key!r}")
            if len(c) != episode[key].ndim or any(int(x) < 1 for x in c):
                raise DataError(f"{where}: key {key!r}: chunks {tuple(c)} do not fit shape "
                                f"{episode[key].shape}")
        return episode
    missing = sorted(set(existing) - set(episode))
    extra = sorted(set(episode) - set(existing))
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r} (the buffer has keys {existing})")
    if extra:
        raise DataError(f"{where}: unexpected key {extra[0]!r} (the buffer has keys {existing})")
    out = {}
    for key, arr in episode.items():
        shape, dtype = buf.key_spec(key)
        if arr.shape[1:] != shape:
            raise DataError(f"{where}: key {key!r} has per-step shape {arr.shape[1:]}, "
                            f"but the buffer stores {shape}")
        if key in chunks and tuple(chunks[key]) != buf.chunks(key):
            raise DataError(f"{where}: key {key!r} already exists with chunks {buf.chunks(key)}")
        out[key] = cast_to(arr, dtype, where, key)
    return out


def match_final(buf: ReplayBuffer, final_obs: Mapping[str, Any] | None, episode: dict[str, np.ndarray],
                where: str) -> dict[str, np.ndarray]:
    """Validate an episode's final observation against ``episode`` (already cast) and the buffer.

    Returns ``{key: per-step array}`` (``{}`` for none). Raises DataError for a key that is not a data
    key, a wrong shape or dtype, NaN/Inf, keys that differ from the first episode's, or a format-1 store.
    """
    if final_obs is not None and not isinstance(final_obs, Mapping):
        raise DataError(f"{where}: final_obs must be a dict {{key: array}}, got {type(final_obs).__name__}")
    given: dict[str, np.ndarray] = {}
    for key, value in (final_obs or {}).items():
        if key not in episode:
            raise DataError(f"{where}: final_obs key {key!r} is not a data key (keys: {sorted(episode)})")
        arr = np.asarray(value)
        if arr.shape != episode[key].shape[1:]:
            raise DataError(f"{where}: final_obs key {key!r} has shape {arr.shape}, but {key!r} has per-step "
                            f"shape {episode[key].shape[1:]}")
        arr = cast_to(arr, episode[key].dtype, where, f"final_obs/{key}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{where}: final_obs key {key!r} contains NaN/Inf")
        given[key] = arr
    if given and (buf.format_version or 2) < 2:
        from lfm_policy.datasets.zarr_backend import rewrite_hint

        raise DataError(f"{where}: final observations need a format-2 store; re-write it first with "
                        f"`{rewrite_hint(buf.where, missing_as_zero=False)}`")
    known = buf.final_obs_keys
    if buf.n_episodes and sorted(given) != known:
        raise DataError(f"{where}: final_obs keys {sorted(given)} differ from the buffer's {known} (the first "
                        "episode fixes which keys have a final observation)")
    return given
