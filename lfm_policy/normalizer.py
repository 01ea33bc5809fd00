"""LinearNormalizer: per-key affine maps fitted from dataset statistics, saved in the state_dict.

For every key, ``normalize(x) = x * scale + offset`` broadcast over the last dimensions:

* ``"minmax"`` (default for actions and low-dim observations) maps [min, max] to [-1, 1]. A dimension
  whose range is below ``range_eps`` (a constant dimension) gets scale 1 and is centred on 0 instead
  of being blown up.
* ``"meanstd"`` maps to zero mean and unit std (std below ``range_eps`` → scale 1).
* ``"image"`` maps camera frames to [0, 1]: uint8 input is divided by 255, float input is taken as
  already in [0, 1] (as produced by ``images_to_float``) and passed through; unnormalize is identity.

The scales and offsets are buffers, so the fitted normalizer is saved and restored with the policy's
state_dict; an empty ``LinearNormalizer()`` rebuilds its keys from a state_dict when loading. Unlike
LeRobot's normalizer, an unknown key is an error, never silently passed through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from lfm_policy.errors import LfmPolicyError

MODES = ("minmax", "meanstd", "image")


class NormalizerKeyError(LfmPolicyError, KeyError):
    """A key the normalizer was not fitted for."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _module_name(key: str) -> str:
    """Child-module name for a key (module names cannot contain '.')."""
    return key.replace("%", "%25").replace(".", "%2E")


def _key_name(module_name: str) -> str:
    return module_name.replace("%2E", ".").replace("%25", "%")


class KeyNormalizer(nn.Module):
    """The affine map of one key: buffers ``scale`` and ``offset`` (per-step shape) and ``is_image``."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor, is_image: bool):
        super().__init__()
        self.register_buffer("scale", scale.to(torch.float32))
        self.register_buffer("offset", offset.to(torch.float32))
        self.register_buffer("is_image", torch.tensor(bool(is_image)))
        self._image = bool(is_image)  # python copy: no device sync per call

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._image = bool(self.is_image)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw values (..., *shape) to the normalized space."""
        if self._image:
            return x.float().div(255.0) if x.dtype == torch.uint8 else x
        x = x if x.is_floating_point() else x.float()
        return x * self.scale.to(x.dtype) + self.offset.to(x.dtype)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (identity for images, which stay in [0, 1])."""
        if self._image:
            return y
        return (y - self.offset.to(y.dtype)) / self.scale.to(y.dtype)


class LinearNormalizer(nn.Module):
    """Per-key affine normalization (see the module docstring).

    Build with :meth:`from_stats`; use :meth:`normalize` / :meth:`unnormalize` on dicts, or
    :meth:`normalize_key` / ``normalizer[key]`` for one key.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys_ = nn.ModuleDict()

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, Any]], *, mode: str = "minmax",
                   image_keys: Iterable[str] = (), key_modes: Mapping[str, str] | None = None,
                   range_eps: float = 1e-4) -> LinearNormalizer:
        """Fit from ``compute_stats`` output.

        Args:
            stats: ``{key: {"min", "max", "mean", "std", ...}}`` (numpy arrays or tensors).
            mode: Mode of non-image keys, ``"minmax"`` or ``"meanstd"``.
            image_keys: Keys normalized as images (their stats are not needed).
            key_modes: Per-key mode overrides.
            range_eps: Ranges/stds below this are treated as constant dimensions.

        Raises:
            LfmPolicyError: Unknown mode, missing statistic, or NaN/Inf in the statistics (names the key).

        """
        out = cls()
        image_keys = set(image_keys)
        key_modes = dict(key_modes or {})
        for key in sorted(set(stats) | image_keys | set(key_modes)):
            m = key_modes.get(key, "image" if key in image_keys else mode)
            if m not in MODES:
                raise LfmPolicyError(f"LinearNormalizer: key {key!r}: unknown mode {m!r}; choose from {MODES}")
            if m == "image":
                out.add_key(key, torch.ones(()), torch.zeros(()), is_image=True)
                continue
            if key not in stats:
                raise LfmPolicyError(f"LinearNormalizer: no statistics for key {key!r}")
            s = stats[key]
            need = ("min", "max") if m == "minmax" else ("mean", "std")
            for name in need:
                if name not in s:
                    raise LfmPolicyError(f"LinearNormalizer: key {key!r}: statistics lack {name!r}")
            a, b = (torch.as_tensor(np.asarray(s[n], dtype=np.float64)) for n in need)
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise LfmPolicyError(f"LinearNormalizer: key {key!r}: statistics contain NaN/Inf")
            if m == "minmax":
                lo, hi = a, b
                span = hi - lo
                const = span < range_eps
                scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(range_eps))
                offset = torch.where(const, -(lo + hi) / 2, -1.0 - lo * scale)
            else:
                mean, std = a, b
                scale = torch.where(std < range_eps, torch.ones_like(std), 1.0 / std.clamp_min(range_eps))
                offset = -mean * scale
            out.add_key(key, scale, offset, is_image=False)
        return out

    def add_key(self, key: str, scale: torch.Tensor, offset: torch.Tensor, *, is_image: bool = False) -> None:
        """Add or replace one key's affine map (shapes of ``scale`` and ``offset`` must match)."""
        if not isinstance(key, str) or not key:
            raise LfmPolicyError(f"LinearNormalizer: invalid key {key!r}")
        if scale.shape != offset.shape:
            raise LfmPolicyError(f"LinearNormalizer: key {key!r}: scale {tuple(scale.shape)} and offset "
                                 f"{tuple(offset.shape)} differ in shape")
        self.keys_[_module_name(key)] = KeyNormalizer(scale, offset, is_image)

    def keys(self) -> list[str]:
        """Sorted keys."""
        return sorted(_key_name(k) for k in self.keys_)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _module_name(key) in self.keys_

    def __getitem__(self, key: str) -> KeyNormalizer:
        if key not in self:
            raise NormalizerKeyError(f"LinearNormalizer: unknown key {key!r}; fitted keys: {self.keys()}")
        return self.keys_[_module_name(key)]

    def normalize_key(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Normalize one key's values."""
        return self._check(key, x).normalize(x)

    def unnormalize_key(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """Unnormalize one key's values."""
        return self._check(key, y).unnormalize(y)

    def normalize(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalize every entry of a flat ``{key: tensor}`` dict (unknown key → NormalizerKeyError)."""
        return {k: self.normalize_key(k, v) for k, v in batch.items()}

    def unnormalize(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unnormalize every entry of a flat ``{key: tensor}`` dict (unknown key → NormalizerKeyError)."""
        return {k: self.unnormalize_key(k, v) for k, v in batch.items()}

    def _check(self, key: str, x: torch.Tensor) -> KeyNormalizer:
        kn = self[key]
        shape = tuple(kn.scale.shape)
        if not kn._image and shape and tuple(x.shape[-len(shape):]) != shape:
            raise LfmPolicyError(f"LinearNormalizer: key {key!r} expects trailing shape {shape}, got "
                                 f"{tuple(x.shape)}")
        return kn

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Create the keys present in ``state_dict`` so that an empty normalizer can be loaded into."""
        head = f"{prefix}keys_."
        for name in sorted({k[len(head):].split(".")[0] for k in state_dict if k.startswith(head)}):
            scale, offset = state_dict.get(f"{head}{name}.scale"), state_dict.get(f"{head}{name}.offset")
            is_image = state_dict.get(f"{head}{name}.is_image")
            if name not in self.keys_ and scale is not None and offset is not None and is_image is not None:
                self.keys_[name] = KeyNormalizer(torch.zeros_like(scale), torch.zeros_like(offset), bool(is_image))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """Shown by ``repr``: the fitted keys."""
        return f"keys={self.keys()}"
