"""Evaluation outputs: ``results.json``, ``report.md``, captioned videos and run comparisons."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.config import atomic_write_text
from lfm_policy.errors import LfmPolicyError
from lfm_policy.eval.metrics import EvalResults

SCHEMA_VERSION = 1
RESULTS = "results.json"
REPORT = "report.md"


def sha256_file(path: str | Path) -> str | None:
    """Hex sha256 of a file (None when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that decide a rollout's numbers."""
    import gymnasium
    import torch

    import lfm_policy

    return {"lfm_policy": lfm_policy.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "gymnasium": gymnasium.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------------------------- video
def caption_frame(frame: np.ndarray, text: str, *, min_size: int = 256) -> np.ndarray:
    """Upscale (nearest) to at least ``min_size`` px and draw ``text`` on a dark band at the top.

    Args:
        frame: uint8 (H, W, 3).
        text: Caption.
        min_size: Minimum output side (small observation images are upscaled so the text fits).

    Returns:
        uint8 (H', W', 3) with H', W' multiples of 16 (what mp4 encoders want).

    """
    from PIL import Image, ImageDraw

    frame = np.asarray(frame, np.uint8)
    scale = max(1, int(np.ceil(min_size / max(1, min(frame.shape[:2])))))
    img = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    h, w = (img.shape[0] + 15) // 16 * 16, (img.shape[1] + 15) // 16 * 16
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[: img.shape[0], : img.shape[1]] = img
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    draw.rectangle([0, 0, w, 14], fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(pil)


def write_video(path: str | Path, frames: Sequence[np.ndarray], *, success: bool, fps: int = 20) -> Path:
    """Write ``frames`` (each uint8 (H, W, 3)) to an mp4 with a "step k/T  success/failure" caption."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    outcome = "SUCCESS" if success else "failure"
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=16) as w:
        for k, frame in enumerate(frames):
            w.append_data(caption_frame(frame, f"step {k}/{len(frames) - 1}  {outcome}"))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ results
def build_record(results: EvalResults, *, task: str, checkpoint: str | Path | None, seed_start: int,
                 n_envs: int, nfe: int | None, solver: dict | None, extra: dict | None = None) -> dict[str, Any]:
    """The ``results.json`` content (see docs/eval.md for the schema)."""
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
    ]
    if s["success_modes"]:
        lines += ["Successful episodes per mode: " + ", ".join(f"{m}: {c}" for m, c in s["success_modes"].items()),
                  ""]
    lines += ["| episode | seed | success | return | length | mode | error | video |",
              "|---|---|---|---|---|---|---|---|"]
    for e in record["episodes"]:
        video = f"[mp4]({e['video']})" if e["video"] else ""
        lines.append(f"| {e['index']} | {e['seed']} | {'yes' if e['success'] else 'no'} | {e['return']:.2f} | "
                     f"{e['length']} | {e['mode'] or ''} | {e['error'] or ''} | {video} |")
    v = record["versions"]
    lines += ["", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]
    return "\n".join(lines)


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
    if record.get("schema_version") != SCHEMA_VERSION or "summary" not in record:
        raise LfmPolicyError(f"{file}: not an lfm-policy results file (schema_version "
                             f"{record.get('schema_version')!r}, expected {SCHEMA_VERSION})")
    return record


# ------------------------------------------------------------------------------------------ compare
def compare_table(records: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """Markdown table with one row per run."""
    rows = ["| run | task | episodes | success | 95 % CI | NFE | chunk ms p50 | chunk ms p95 | mean length |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in zip(names, records):
        s, lat = r["summary"], r["summary"]["chunk_latency_ms"]
        lo, hi = s["success_ci95"]
        rows.append(f"| {name} | {r['task']} | {s['n_episodes']} | {_fmt(s['success_rate'])} | [{lo:.3f}, {hi:.3f}] "
                    f"| {r['nfe']} | {_fmt(lat['p50'], '.2f')} | {_fmt(lat['p95'], '.2f')} | "
                    f"{_fmt(s['mean_length'], '.1f')} |")
    seeds = {(r["task"], r["seed_start"]) for r in records}
    if len(seeds) > 1:
        rows.append("\nNote: the runs used different tasks or seed offsets, so they are not paired.")
    return "\n".join(rows)


def compare_plot(records: Sequence[dict[str, Any]], names: Sequence[str], path: str | Path) -> Path:
    """PNG with success (and its Wilson interval) against NFE and against chunk latency p50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in zip(names, records):
        s = r["summary"]
        if s["success_rate"] is None:
            continue
        lo, hi = s["success_ci95"]
        yerr = [[s["success_rate"] - lo], [hi - s["success_rate"]]]
        for ax, x in zip(axes, (r["nfe"], s["chunk_latency_ms"]["p50"])):
            if x is not None:
                ax.errorbar([x], [s["success_rate"]], yerr=yerr, fmt="o", capsize=4, label=name)
    for ax, label in zip(axes, ("NFE per chunk", "chunk latency p50 [ms]")):
        ax.set_xlabel(label)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("success vs cost (error bars: Wilson 95 %)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
