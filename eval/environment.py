"""Which environment an evaluation ran in: the record stored in ``results.json`` and its fingerprint.

The record has the task, ``images``, the env kwargs as passed, where they came from (``source``: the
``--env-from`` dataset path or ``"registry default"``) and what the environment itself reports about
its construction (:func:`describe_env`, run inside the env's worker): class, episode limit,
observation and action spaces, and — for envs with an ``env_description()`` method (robosuite,
Meta-World, :class:`~lfm_policy.envs.adapter.GymAdapter`) — render settings, cameras, controller,
control frequency, hard reset and the effective robomimic ``env_meta`` with its sha256.

The fingerprint is the sha256 of the canonical JSON of the record without ``source`` (paths) and the
fingerprint itself: two runs with the same fingerprint ran in the same environment.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

UNKNOWN = "unknown"
"""The environment of a results file written before the environment was recorded (schema 1)."""
REGISTRY_DEFAULT = "registry default"
"""``source`` of an environment made from the task registry (no ``--env-from``)."""

STANDARD_FIELDS: tuple[str, ...] = ("render_settings", "cameras", "video_camera", "controller", "control_freq",
                                    "hard_reset", "env_meta")
_NOT_FINGERPRINTED = ("source", "fingerprint")


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, tuples and other values turned into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON (the input of every sha256 here)."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))


def canonical_sha256(obj: Any) -> str:
    """Hex sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def describe_env(env: Any) -> dict[str, Any]:
    """What ``env`` (possibly wrapped) reports about its own construction (JSON-serializable).

    Returns:
        ``env_class``, ``max_episode_steps``, ``observation`` (``{key: [shape, dtype]}``), ``action``
        (shape, low, high), the fields of :data:`STANDARD_FIELDS` (None where the env has no such
        notion) and whatever else the env's ``env_description()`` reports; envs without that method
        contribute their ``config.to_dict()`` when they have one (the toy tasks).

    """
    inner, own = env, None
    while inner is not None and own is None:  # the outermost layer that describes itself
        own = getattr(type(inner), "env_description", None) and inner.env_description()
        inner = getattr(inner, "env", None)
    base = env.unwrapped
    act = env.action_space
    desc: dict[str, Any] = {
        "env_class": f"{type(base).__module__}.{type(base).__qualname__}",
        "max_episode_steps": getattr(env, "max_episode_steps", None) or getattr(base, "max_episode_steps", None),
        "observation": {k: [list(s.shape), str(np.dtype(s.dtype))] for k, s in env.observation_space.items()},
        "action": {"shape": list(act.shape), "low": np.asarray(act.low, float).round(6).tolist(),
                   "high": np.asarray(act.high, float).round(6).tolist()},
        **{k: None for k in STANDARD_FIELDS},
    }
    if own:
        desc.update(own)
    elif hasattr(getattr(base, "config", None), "to_dict"):
        desc["config"] = base.config.to_dict()
    return jsonable(desc)


def policy_camera_kwargs(task: str, image_shapes: dict[str, tuple[int, ...]],
                         env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Env options that render only the cameras a policy reads, at the policy's resolution.

    For the built-in families (toy, Meta-World, robosuite): ``image_size`` from the images' (H, W, C)
    shape (when square and all equal), Meta-World's ``camera`` from its single ``<camera>_image`` key,
    robosuite's ``cameras`` from its ``<camera>_image`` keys. Options already in ``env_kwargs`` win;
    other tasks get ``env_kwargs`` unchanged.

    Args:
        task: Registered task name.
        image_shapes: ``{key: (H, W, C)}`` of the policy's camera keys.
        env_kwargs: Options given so far (``--env-arg``, ``--env-from``).

    """
    out = dict(env_kwargs)
    family = task.split("/", 1)[0]
    if not image_shapes or family not in ("toy", "metaworld", "robosuite"):
        return out
    sides = {(int(s[0]), int(s[1])) for s in image_shapes.values()}
    if len(sides) == 1 and (side := sides.pop())[0] == side[1]:
        out.setdefault("image_size", side[0])
    cams = [k[: -len("_image")] for k in sorted(image_shapes) if k.endswith("_image")]
    if family == "metaworld" and len(cams) == 1:
        out.setdefault("camera", cams[0])
    if family == "robosuite" and cams:
        out.setdefault("cameras", cams)
    return out


def environment_record(task: str, images: bool, env_kwargs: dict[str, Any], source: str,
                       description: dict[str, Any] | None) -> dict[str, Any]:
    """The ``environment`` entry of ``results.json`` (see the module docstring)."""
    record: dict[str, Any] = {"task": task, "images": bool(images), "source": source,
                              "env_kwargs": jsonable(env_kwargs), **(description or {})}
    meta = record.get("env_meta")
    record["env_meta_sha256"] = canonical_sha256(meta) if meta is not None else None
    record["fingerprint"] = fingerprint(record)
    return record


def fingerprint(record: dict[str, Any]) -> str:
    """sha256 of the record without its source path and fingerprint."""
    return canonical_sha256({k: v for k, v in record.items() if k not in _NOT_FINGERPRINTED})


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted.path: leaf}``; an empty dict has no leaves (so ``{}`` vs ``{"k": 1}`` differs only in ``k``)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def environment_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The fingerprinted fields (dotted paths into nested dicts) that differ: ``[(field, a, b)]``."""
    fa = _flatten({k: v for k, v in a.items() if k not in _NOT_FINGERPRINTED})
    fb = _flatten({k: v for k, v in b.items() if k not in _NOT_FINGERPRINTED})
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if k not in fa or k not in fb or canonical_json(fa[k]) != canonical_json(fb[k])]
