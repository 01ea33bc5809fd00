"""Validation of episode dicts and the conventions shared by every dataset format.

An *episode* is a flat ``{key: array}`` dict whose arrays all have the same length T ≥ 1 on axis 0.
Images are ``uint8`` arrays of shape (T, H, W, C) with C in {1, 3, 4}; everything else is "low-dim"
(numeric, any trailing shape, usually (T, D)).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lfm_policy.errors import DataError

#: dtype kinds accepted in a dataset: bool, signed/unsigned integer, float.
NUMERIC_KINDS = frozenset("biuf")


def is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True for uint8 arrays of shape (T, H, W, C) with C in {1, 3, 4} (the camera convention).

    Args:
        shape: Full array shape including the time axis.
        dtype: Array dtype.

    """
    return np.dtype(dtype) == np.uint8 and len(shape) == 4 and shape[-1] in (1, 3, 4)


def check_key_name(key: object, where: str) -> str:
    """Return ``key`` if it is a usable array name (non-empty str without '/'), else raise DataError."""
    if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
        raise DataError(f"{where}: invalid key {key!r} (need a non-empty name without '/')")
    return key


def check_episode(
    data: Mapping[str, object],
    where: str,
    *,
    finite_keys: tuple[str, ...] | None = None,
    check_names: bool = True,
) -> dict[str, np.ndarray]:
    """Validate one episode and return it as ``{key: np.ndarray}``.

    Args:
        data: ``{key: (T, ...)}`` arrays (anything ``np.asarray`` accepts).
        where: Prefix for error messages (file and episode), e.g. ``"out.zarr: episode 3"``.
        finite_keys: Keys whose float values must be finite; ``None`` checks every float key.
        check_names: Also check that keys are valid array names (:func:`check_key_name`).

    Returns:
        The arrays as numpy arrays (no copy when already numpy).

    Raises:
        DataError: Empty dict, non-numeric dtype, scalar array, empty episode (T = 0), lengths that
            differ between keys, or NaN/Inf in a checked key. The message names ``where`` and the key.

    """
    if not isinstance(data, Mapping) or not data:
        raise DataError(f"{where}: episode has no arrays (expected a non-empty dict of arrays)")
    out: dict[str, np.ndarray] = {}
    length: tuple[str, int] | None = None
    for key, value in data.items():
        if check_names:
            check_key_name(key, where)
        arr = np.asarray(value)
        if arr.dtype.kind not in NUMERIC_KINDS:
            raise DataError(f"{where}: key {key!r} has unsupported dtype {arr.dtype} (need bool/int/float)")
        if arr.ndim == 0:
            raise DataError(f"{where}: key {key!r} is a scalar; expected an array of shape (T, ...)")
        if arr.shape[0] == 0:
            raise DataError(f"{where}: key {key!r} is empty (episode length 0)")
        if length is None:
            length = (key, arr.shape[0])
        elif arr.shape[0] != length[1]:
            raise DataError(
                f"{where}: key {key!r} has length {arr.shape[0]} but {length[0]!r} has length {length[1]}"
            )
        check_finite(arr, where, key, only_if=finite_keys is None or key in finite_keys)
        out[key] = arr
    return out


def check_finite(arr: np.ndarray, where: str, key: str, *, only_if: bool = True) -> None:
    """Raise DataError naming ``where``/``key`` and the first bad step if a float array has NaN/Inf."""
    if not only_if or arr.dtype.kind != "f":
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        raise DataError(f"{where}: key {key!r} contains NaN/Inf (first at step {step})")


def cast_to(arr: np.ndarray, dtype: np.dtype, where: str, key: str) -> np.ndarray:
    """Return ``arr`` as ``dtype``: exact match, or float → float; anything else is a DataError."""
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    if arr.dtype.kind == "f" and dtype.kind == "f":
        return arr.astype(dtype)
    raise DataError(f"{where}: key {key!r} has dtype {arr.dtype}, but the dataset stores {dtype}")
