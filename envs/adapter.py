"""Plug any gymnasium environment into lfm-policy by naming its observation keys.

:class:`GymAdapter` turns an env with array or (nested) dict observations into one that follows the
task conventions of :mod:`lfm_policy.envs.registry`: a flat ``spaces.Dict`` observation whose
low-dim entries are float32 1-D arrays and whose camera entries (names ending in ``_image``) are
uint8 (H, W, 3); ``info["is_success"]`` on every step; a ``max_episode_steps`` attribute.

Observation sources (the values of ``obs_keys``) are written as:

* ``""`` — the whole observation (array observation spaces);
* ``"key"`` or ``"outer/inner"`` — an entry of a (nested) dict observation;
* an optional trailing slice on the last axis, e.g. ``"[0:2]"`` or ``"observation[3:6]"``.

Two views of the observation: ``success_fn`` receives the wrapped env's *raw* observation (here
Pendulum's array ``[cos, sin, velocity]``), while the policy and a registered task's expert receive
the *adapted* dict (``obs["cos_sin"]``, ``obs["velocity"]``).

Example (Pendulum-v1 with its 3-d observation split into two keys; low-dim only, since Pendulum
renders through pygame)::

    env = GymAdapter(
        gym.make("Pendulum-v1"),
        {"cos_sin": "[0:2]", "velocity": "[2:3]"},
        success_fn=lambda obs, reward, terminated, truncated, info: obs[0] > 0.98,  # raw array obs
    )

With an env that renders ``rgb_array`` frames itself (MuJoCo envs), ``render_image_key`` adds a camera::

    env = GymAdapter(
        gym.make("InvertedPendulum-v5", render_mode="rgb_array"),
        {"qpos": "[0:2]", "qvel": "[2:4]"},
        render_image_key="side_image",
        image_size=84,
    )
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lfm_policy.errors import LfmPolicyError

SuccessFn = Callable[[Any, float, bool, bool, dict], bool]
_SOURCE_RE = re.compile(r"^(?P<path>[^\[\]]*)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


class AdapterError(LfmPolicyError, ValueError):
    """The observation-key mapping does not fit the wrapped environment."""


@dataclasses.dataclass(frozen=True)
class _Source:
    path: tuple[str, ...]
    index: slice | None
    is_image: bool


def _is_image_space(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[-1] == 3


def _lookup(space_or_obs: Any, path: tuple[str, ...], where: str) -> Any:
    node = space_or_obs
    for part in path:
        try:
            node = node[part]
        except (KeyError, TypeError, IndexError):
            raise AdapterError(f"{where}: observation has no entry {'/'.join(path)!r}") from None
    return node


def _resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of uint8 (H, W, C) to (size, size, C)."""
    h, w = img.shape[:2]
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return np.ascontiguousarray(img[rows][:, cols])


class GymAdapter(gym.Wrapper):
    """Wrap a gymnasium env so it follows lfm-policy's task conventions (see module docstring).

    Args:
        env: Any gymnasium env with a Box action space and Box or (nested) Dict observations.
        obs_keys: ``{our_key: source}``; None keeps a Dict observation's top-level Box entries as
            they are, or names an array observation ``"state"`` (``"camera_image"`` if it is an image).
        success_key: Info key read as success when ``success_fn`` is None (missing → False).
        success_fn: ``success_fn(raw_obs, reward, terminated, truncated, info) -> bool``; ``raw_obs`` is
            the wrapped env's own observation (not the adapted dict that policies and experts see).
        render_image_key: Add ``env.render()`` (needs ``render_mode="rgb_array"``) under this key.
        image_size: Resize the rendered image to (image_size, image_size) (nearest neighbour).
        max_episode_steps: Episode limit; defaults to ``env.spec.max_episode_steps``.

    Raises:
        AdapterError: When a source is missing, a slice is empty, an image key is misnamed, or the
            action space is not a Box.

    """

    def __init__(
        self,
        env: gym.Env,
        obs_keys: dict[str, str] | None = None,
        *,
        success_key: str = "is_success",
        success_fn: SuccessFn | None = None,
        render_image_key: str | None = None,
        image_size: int | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Box):
            raise AdapterError(f"action space must be a gymnasium Box, got {type(env.action_space).__name__}")
        self.success_key = success_key
        self.success_fn = success_fn
        self.render_image_key = render_image_key
        self.image_size = image_size
        steps = max_episode_steps or (env.spec.max_episode_steps if env.spec is not None else None)
        if not steps:
            raise AdapterError("max_episode_steps is not set by the env's spec; pass max_episode_steps=")
        self.max_episode_steps = int(steps)
        self._sources = self._parse(env.observation_space, obs_keys or self._default_keys(env.observation_space))
        out = {k: self._source_space(env.observation_space, k, s) for k, s in self._sources.items()}
        if render_image_key is not None:
            if not render_image_key.endswith("_image"):
                raise AdapterError(f"render_image_key {render_image_key!r} must end in '_image'")
            if env.render_mode != "rgb_array":
                raise AdapterError("render_image_key needs the env made with render_mode='rgb_array'")
            if render_image_key in out:
                raise AdapterError(f"render_image_key {render_image_key!r} is also an obs_keys entry")
            h, w = (image_size, image_size) if image_size else self._probe_render_shape()
            out[render_image_key] = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.observation_space = spaces.Dict(out)
        self.action_space = env.action_space

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _default_keys(space: spaces.Space) -> dict[str, str]:
        if isinstance(space, spaces.Dict):
            keys = {k: k for k, s in space.spaces.items() if isinstance(s, spaces.Box)}
            if not keys:
                raise AdapterError("the env's Dict observation has no Box entries; pass obs_keys")
            return {GymAdapter._default_name(k, _is_image_space(space[k])): v for k, v in keys.items()}
        return {"camera_image" if _is_image_space(space) else "state": ""}

    @staticmethod
    def _default_name(key: str, is_image: bool) -> str:
        if is_image:
            return key if key.endswith("_image") else f"{key}_image"
        return f"{key}_state" if key.endswith("_image") else key

    @staticmethod
    def _parse(space: spaces.Space, obs_keys: dict[str, str]) -> dict[str, _Source]:
        sources = {}
        for key, src in obs_keys.items():
            where = f"obs_keys[{key!r}]"
            m = _SOURCE_RE.match(src)
            if m is None:
                raise AdapterError(f"{where}: cannot parse source {src!r} (use 'key', 'a/b', '[i:j]', 'key[i:j]')")
            path = tuple(p for p in m["path"].split("/") if p)
            sub = _lookup(space, path, where)
            if not isinstance(sub, spaces.Box):
                raise AdapterError(f"{where}: source {src!r} is a {type(sub).__name__}, expected a Box")
            index = None
            if m["start"] is not None:
                index = slice(int(m["start"]) if m["start"] else None, int(m["stop"]) if m["stop"] else None)
                if len(range(*index.indices(sub.shape[-1]))) == 0:
                    raise AdapterError(f"{where}: slice in {src!r} selects nothing from shape {sub.shape}")
            is_image = _is_image_space(sub) and index is None
            if is_image != key.endswith("_image"):
                kind = "an image (uint8 HxWx3)" if is_image else "not an image"
                raise AdapterError(f"{where}: source {src!r} is {kind}; only image keys may end in '_image'")
            sources[key] = _Source(path, index, is_image)
        return sources

    @staticmethod
    def _source_space(space: spaces.Space, key: str, src: _Source) -> spaces.Box:
        sub = _lookup(space, src.path, f"obs_keys[{key!r}]")
        if src.is_image:
            return spaces.Box(0, 255, sub.shape, np.uint8)
        low, high = np.broadcast_to(sub.low, sub.shape), np.broadcast_to(sub.high, sub.shape)
        if src.index is not None:
            low, high = low[..., src.index], high[..., src.index]
        return spaces.Box(low.reshape(-1).astype(np.float32), high.reshape(-1).astype(np.float32), dtype=np.float32)

    def _probe_render_shape(self) -> tuple[int, int]:
        self.env.reset()
        frame = self.env.render()
        if frame is None or np.asarray(frame).ndim != 3:
            raise AdapterError("env.render() returned no RGB frame; make the env with render_mode='rgb_array'")
        return tuple(np.asarray(frame).shape[:2])  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------------
    def _convert(self, raw: Any) -> dict[str, np.ndarray]:
        out = {}
        for key, src in self._sources.items():
            value = np.asarray(_lookup(raw, src.path, f"obs_keys[{key!r}]"))
            if src.is_image:
                out[key] = np.ascontiguousarray(value, dtype=np.uint8)
                continue
            if src.index is not None:
                value = value[..., src.index]
            out[key] = value.reshape(-1).astype(np.float32)
        if self.render_image_key is not None:
            frame = np.asarray(self.env.render(), dtype=np.uint8)[..., :3]
            out[self.render_image_key] = _resize_nearest(frame, self.image_size) if self.image_size else frame
        return out

    def env_description(self) -> dict[str, Any]:
        """What an evaluation records about this env (JSON-serializable)."""
        spec = self.env.spec
        fn = self.success_fn
        cameras = []
        if self.render_image_key is not None:
            h, w = self.observation_space[self.render_image_key].shape[:2]
            cameras.append({"name": self.render_image_key, "height": int(h), "width": int(w)})
        return {
            "family": "gym_adapter",
            "wrapped_env_id": spec.id if spec is not None else type(self.env.unwrapped).__name__,
            "wrapped_env_kwargs": {k: repr(v) for k, v in (spec.kwargs if spec is not None else {}).items()},
            "obs_keys": {k: "/".join(src.path) + (f"[{src.index.start}:{src.index.stop}]" if src.index else "")
                         for k, src in self._sources.items()},
            "success": f"success_fn {getattr(fn, '__qualname__', repr(fn))}" if fn else f"info[{self.success_key!r}]",
            "max_episode_steps": self.max_episode_steps,
            "cameras": cameras,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the wrapped env; returns (obs dict, info with ``is_success=False``)."""
        raw, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        info["is_success"] = False
        return self._convert(raw), info

    def step(self, action: np.ndarray):
        """Step the wrapped env; returns (obs dict, reward, terminated, truncated, info)."""
        action = np.asarray(action, dtype=self.env.action_space.dtype).reshape(self.env.action_space.shape)
        raw, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        if self.success_fn is not None:
            success = self.success_fn(raw, float(reward), bool(terminated), bool(truncated), info)
        else:
            success = info.get(self.success_key, False)
        info["is_success"] = bool(success)
        return self._convert(raw), float(reward), bool(terminated), bool(truncated), info
