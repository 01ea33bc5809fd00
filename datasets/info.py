"""What ``lfm-policy data info`` reports: :func:`describe` (a JSON-ready dict) and :func:`render` (its text).

The report covers episodes and an integer-binned length histogram, every key's shape, dtype and
statistics (non-finite values are left out of the statistics and flagged per key, with their count
and first episode and step, instead of aborting the report), the store's format version and whether
its chunks are checksummed, final observations, the environment (robosuite controller, robots,
control frequency, cameras, other kwargs), collection attrs and filter keys.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: env_kwargs shown on their own line (the rest are listed as "other kwargs").
_SHOWN_KWARGS = ("robots", "controller_configs", "control_freq", "hard_reset", "camera_names", "camera_heights",
                 "camera_widths")
_COLLECT_KEYS = ("task", "collector", "collect_format", "seeds", "base_seed", "n_discarded", "discarded_seeds",
                 "images", "keep_failed", "modes", "operators", "collect_config", "env_kwargs")


def describe(source: Any, *, stats: bool = True) -> dict[str, Any]:
    """The content of ``data info`` as a JSON-ready dict (NaN statistics become ``None``)."""
    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile
    from lfm_policy.datasets.stats import compute_stats

    lengths = np.asarray(source.episode_lengths)
    hdf5 = isinstance(source, RobomimicFile)
    out: dict[str, Any] = {
        "path": source.where,
        "format": "robomimic_hdf5" if hdf5 else "zarr_replay_buffer",
        "n_episodes": int(len(lengths)),
        "n_steps": int(lengths.sum()),
        "episode_length": length_summary(lengths),
        "keys": {},
    }
    if not hdf5:
        out["format_version"] = source.format_version
        out["checksummed"] = source.checksummed
        out["final_obs_keys"] = source.final_obs_keys
    key_stats = compute_stats(source, nonfinite="skip") if stats and len(lengths) else {}
    for key in source.keys:
        shape, dtype = source.key_spec(key)
        entry: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype), "image": key in source.image_keys}
        for name, value in key_stats.get(key, {}).items():
            if name == "first_nonfinite":
                entry[name] = {"episode": int(value[0]), "step": int(value[1])}
            else:
                entry[name] = _json_floats(np.round(np.asarray(value, dtype=np.float64), 6))
        out["keys"][key] = entry
    if hdf5:
        out["env_meta"] = source.env_meta
        out["next_obs_keys"] = source.next_obs_keys
        out["filter_keys"] = {k: len(v) for k, v in source.filter_keys.items()}
        extra = source.extra_attrs
        collect = extra.pop("lfm_policy_collect", None)  # what `lfm-policy collect --format robomimic` records
        out["attrs"] = {**collect, **extra} if isinstance(collect, dict) else extra
    else:
        out["attrs"] = {k: v for k, v in source.attrs.items() if k != "filters"}
        out["filter_keys"] = {k: len(v) for k, v in (source.attrs.get("filters") or {}).items()}
    return out


def _json_floats(a: np.ndarray) -> Any:
    """``a.tolist()`` with NaN as ``None`` (JSON has no NaN)."""
    if a.ndim == 0:
        return None if np.isnan(a) else float(a)
    return [_json_floats(x) for x in a]


def length_summary(lengths: Any) -> dict[str, Any]:
    """min/max/mean and a histogram of at most 8 integer-aligned bins ``[lo, hi, count]`` (``hi`` inclusive).

    Every bin covers the same number of distinct lengths, so no two bins share an integer.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return {"min": 0, "max": 0, "mean": 0.0, "histogram": []}
    lo, hi = int(lengths.min()), int(lengths.max())
    span = hi - lo + 1
    width = math.ceil(span / min(8, span))
    counts = np.bincount((lengths - lo) // width, minlength=math.ceil(span / width))
    histogram = [[lo + i * width, min(lo + (i + 1) * width - 1, hi), int(c)] for i, c in enumerate(counts)]
    return {"min": lo, "max": hi, "mean": round(float(lengths.mean()), 2), "histogram": histogram}


def _fmt(values: Any) -> str:
    flat = values if isinstance(values, list) else [values]
    text = ", ".join("nan" if v is None else f"{v:.4g}" for v in flat[:6])
    return f"[{text}{', ...' if len(flat) > 6 else ''}]"


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def env_lines(meta: dict[str, Any]) -> list[str]:
    """The environment as text: name and type, then controller, robots, cameras and the other kwargs."""
    kwargs = meta.get("env_kwargs") or {}
    version = f", version {meta['env_version']}" if meta.get("env_version") else ""
    lines = [f"env: {meta.get('env_name', '?')} (type {meta.get('type', '?')}{version})"]
    parts = []
    if "robots" in kwargs:
        robots = kwargs["robots"]
        parts.append("robots: " + (", ".join(map(str, robots)) if isinstance(robots, list) else str(robots)))
    controller = kwargs.get("controller_configs")
    if isinstance(controller, dict):
        parts.append(f"controller: {controller.get('type', '?')}")
    for key in ("control_freq", "hard_reset"):
        if key in kwargs:
            parts.append(f"{key}: {kwargs[key]}")
    if parts:
        lines.append("  " + "   ".join(parts))
    cams = kwargs.get("camera_names")
    if cams:
        cams = cams if isinstance(cams, list) else [cams]

        def size(key: str, i: int) -> Any:
            v = kwargs.get(key, "?")
            return v[i] if isinstance(v, list) and i < len(v) else v

        lines.append("  cameras (HxW): " + ", ".join(f"{c} {size('camera_heights', i)}x{size('camera_widths', i)}"
                                                     for i, c in enumerate(cams)))
    other = {k: v for k, v in kwargs.items() if k not in _SHOWN_KWARGS}
    if other:
        lines.append("  other kwargs: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(other.items())))
    return lines


def collect_lines(attrs: dict[str, Any]) -> list[str]:
    """Task and collection attrs (``lfm-policy collect`` writes them) as text."""
    parts = []
    for key in ("task", "collector", "collect_format"):
        if key in attrs:
            parts.append(f"{key}: {attrs[key]}")
    if isinstance(attrs.get("seeds"), list):
        base = f", base seed {attrs['base_seed']}" if "base_seed" in attrs else ""
        parts.append(f"kept seeds: {len(attrs['seeds'])}{base}")
    if "n_discarded" in attrs:
        parts.append(f"discarded: {attrs['n_discarded']}")
    lines = ["   ".join(parts)] if parts else []
    for key in ("images", "keep_failed"):
        if key in attrs:
            lines.append(f"  {key}: {attrs[key]}")
    for key in ("modes", "operators", "env_kwargs", "collect_config"):
        if isinstance(attrs.get(key), dict) and attrs[key]:
            lines.append(f"  {key}: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(attrs[key].items())))
    return lines


def render(info: dict[str, Any]) -> str:
    """The text report of :func:`describe`'s dict."""
    from lfm_policy.datasets.zarr_backend import rewrite_hint

    lines = []
    el = info["episode_length"]
    fmt = info["format"]
    if fmt == "zarr_replay_buffer" and info.get("format_version") is not None:
        if info["checksummed"]:
            fmt += f", format {info['format_version']}: chunks checksummed (crc32c)"
        else:
            fmt += (f", format {info['format_version']}: no checksums; re-write it as format 2 with "
                    f"`{rewrite_hint(info['path'], missing_as_zero=False)}`")
    lines.append(f"{info['path']}  ({fmt})")
    lines.append(f"episodes: {info['n_episodes']}   steps: {info['n_steps']}   "
                 f"episode length min/mean/max: {el['min']}/{el['mean']}/{el['max']}")
    if el["histogram"]:
        peak = max(c for _, _, c in el["histogram"]) or 1
        for lo, hi, c in el["histogram"]:
            label = f"{lo}-{hi}" if hi > lo else f"{lo}"
            lines.append(f"  {label:>13} {'#' * max(1 if c else 0, round(30 * c / peak))} {c}")
    lines.append("keys:")
    for key, e in info["keys"].items():
        kind = "image" if e["image"] else "low-dim"
        lines.append(f"  {key:<28} {str(tuple(e['shape'])):<16} {e['dtype']:<8} {kind}")
        if "nonfinite" in e:
            first = e["first_nonfinite"]
            lines.append(f"      !! {int(e['nonfinite'])} NaN/Inf values (first at episode {first['episode']}, step "
                         f"{first['step']}); the statistics below leave them out")
        for name in ("min", "max", "mean", "std"):
            if name in e:
                lines.append(f"      {name:<5} {_fmt(e[name])}")
    if info.get("final_obs_keys"):
        lines.append("final observations: " + ", ".join(info["final_obs_keys"]))
    if "next_obs_keys" in info:
        lines.append(f"next_obs: {len(info['next_obs_keys'])} keys" if info["next_obs_keys"] else "next_obs: none")
    meta = info.get("env_meta") if "env_meta" in info else info.get("attrs", {}).get("env_meta")
    if meta:
        lines.extend(env_lines(meta))
    attrs = info.get("attrs") or {}
    lines.extend(collect_lines(attrs))
    if info["filter_keys"]:
        lines.append("filter keys: " + ", ".join(f"{k} ({n} episodes)" for k, n in info["filter_keys"].items()))
    other = sorted(k for k in attrs if k not in ("env_meta", *_COLLECT_KEYS))
    if other:
        lines.append("attrs: " + ", ".join(other))
    return "\n".join(lines)
