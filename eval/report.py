"""Evaluation outputs: ``results.json`` and ``report.md`` (videos: :mod:`.video`, comparisons: :mod:`.compare`).

Schema 2 adds ``environment`` (:mod:`lfm_policy.eval.environment`); files of schema 1 are still read,
with ``environment`` set to ``"unknown"``.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.checkpoint import sha256_file
from lfm_policy.config import atomic_write_text
from lfm_policy.errors import LfmPolicyError
from lfm_policy.eval.compare import solver_text
from lfm_policy.eval.environment import UNKNOWN
from lfm_policy.eval.metrics import EvalResults

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
SIMULATORS = ("mujoco", "robosuite", "robomimic", "metaworld")
RESULTS = "results.json"
REPORT = "report.md"


def versions() -> dict[str, str]:
    """Versions of the packages that decide a rollout's numbers."""
    import gymnasium
    import torch

    import lfm_policy

    out = {"lfm_policy": lfm_policy.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "gymnasium": gymnasium.__version__, "python": platform.python_version()}
    for name in SIMULATORS:  # installed simulator packages (read from their metadata: nothing imported)
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------------ results
def build_record(results: EvalResults, *, task: str, checkpoint: str | Path | None, seed_start: int,
                 n_envs: int, nfe: int | None, solver: dict | None, extra: dict | None = None) -> dict[str, Any]:
    """The ``results.json`` content (README, "Evaluating a policy", lists the fields)."""
    ckpt = Path(checkpoint) if checkpoint else None
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task,
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_sha256": sha256_file(ckpt / "model.safetensors") if ckpt else None,
        "config_sha256": sha256_file(ckpt / "policy.json") if ckpt else None,
        "seed_start": seed_start,
        "episodes_requested": results.requested,
        "n_envs": n_envs,
        "nfe": nfe,
        "solver": solver,
        **(extra or {}),
        "environment": results.environment if results.environment is not None else UNKNOWN,
        "summary": results.summary(),
        "versions": versions(),
        "episodes": [e.to_dict() for e in results.episodes],
    }


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def render_report(record: dict[str, Any]) -> str:
    """Markdown report of one run."""
    s = record["summary"]
    lo, hi = s["success_ci95"]
    lat = s["chunk_latency_ms"]
    lines = [
        f"# Evaluation: {record['task']}", "",
        f"Checkpoint `{record['checkpoint']}` (weights sha256 `{(record['checkpoint_sha256'] or '')[:12]}`, "
        f"config sha256 `{(record['config_sha256'] or '')[:12]}`), seeds {record['seed_start']}…"
        f"{record['seed_start'] + record['episodes_requested'] - 1}, {record['n_envs']} env(s)"
        + (" — **interrupted**" if s["interrupted"] else "") + ".", "",
        "| episodes | success | 95 % CI (Wilson) | mean return | mean length | errors | NFE | "
        "chunk ms p50 | chunk ms p95 | episodes/min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['n_episodes']} | {_fmt(s['success_rate'])} | [{lo:.3f}, {hi:.3f}] | {_fmt(s['mean_return'], '.2f')} | "
        f"{_fmt(s['mean_length'], '.1f')} | {s['n_errors']} | {record['nfe']} | {_fmt(lat['p50'], '.2f')} | "
        f"{_fmt(lat['p95'], '.2f')} | {_fmt(s['episodes_per_min'], '.1f')} |", "",
        f"Policy: head `{record.get('head') or '?'}`, solver {solver_text(record.get('solver'))}, "
        f"NFE {record['nfe']} per chunk.", "",
        *environment_lines(record.get("environment", UNKNOWN)),
    ]
    if s["success_modes"]:
        lines += ["Successful episodes per mode: " + ", ".join(f"{m}: {c}" for m, c in s["success_modes"].items()),
                  ""]
    if s.get("n_collisions"):
        lines += [f"Episodes ended by a collision (obstacle or keep-out zone): {s['n_collisions']} of "
                  f"{s['n_episodes']}.", ""]
    lines += ["| episode | seed | success | return | length | mode | error | video |",
              "|---|---|---|---|---|---|---|---|"]
    for e in record["episodes"]:
        video = f"[mp4]({e['video']})" if e["video"] else ""
        lines.append(f"| {e['index']} | {e['seed']} | {'yes' if e['success'] else 'no'} | {e['return']:.2f} | "
                     f"{e['length']} | {e['mode'] or ''} | {e['error'] or ''} | {video} |")
    v = record["versions"]
    lines += ["", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]
    return "\n".join(lines)


def environment_lines(env: Any) -> list[str]:
    """Markdown lines describing the environment record (or saying it is unknown)."""
    if not isinstance(env, dict):
        return ["Environment: unknown (results written before environments were recorded).", ""]
    cams = ", ".join(f"{c['name']} {c['height']}×{c['width']}" for c in env.get("cameras") or []) or "none"
    rows = [("task", env["task"]), ("source", env["source"]), ("env class", env.get("env_class")),
            ("images", env["images"]), ("cameras", cams), ("render settings", env.get("render_settings")),
            ("max episode steps", env.get("max_episode_steps")), ("controller", env.get("controller")),
            ("control freq [Hz]", env.get("control_freq")), ("hard reset", env.get("hard_reset")),
            ("env kwargs as passed", json.dumps(env.get("env_kwargs"), sort_keys=True)[:300]),
            ("env_meta sha256", env.get("env_meta_sha256")), ("fingerprint", env["fingerprint"])]
    lines = ["## Environment", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in rows if v is not None]
    if env.get("env_meta") is not None:
        lines += ["", "<details><summary>effective env_meta (robomimic env_args)</summary>", "", "```json",
                  json.dumps(env["env_meta"], indent=1, sort_keys=True), "```", "", "</details>"]
    return [*lines, ""]


def write_results(out: str | Path, record: dict[str, Any]) -> Path:
    """Write ``results.json`` and ``report.md`` into ``out`` (atomically, each)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESULTS, json.dumps(record, indent=2))
    atomic_write_text(out / REPORT, render_report(record))
    return out / RESULTS


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results directory (or its ``results.json``)."""
    path = Path(path)
    file = path / RESULTS if path.is_dir() else path
    if not file.is_file():
        raise LfmPolicyError(f"{path}: no {RESULTS} (run `lfm-policy eval ... --out {path}` first)")
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise LfmPolicyError(f"{file}: corrupt JSON ({e})") from None
    if not isinstance(record, dict) or record.get("schema_version") not in READABLE_SCHEMAS or "summary" not in record:
        version = record.get("schema_version") if isinstance(record, dict) else None
        raise LfmPolicyError(f"{file}: not an lfm-policy results file (schema_version {version!r}, "
                             f"expected one of {READABLE_SCHEMAS})")
    if record["schema_version"] == 1:
        record["environment"] = UNKNOWN
    return record
