"""The run directory of ``lfm-policy train``: layout, status, resume checks, metrics and console output.

Layout of ``out_dir``::

    train_config.json        the full run config (file + overrides), what ``--resume OUT_DIR`` reads
    status.json              {"state": running | complete | failed | interrupted, "global_step", ...}
    metrics.jsonl            one JSON record per log / validation / rollout line, steps strictly
                             increasing per kind (a resume drops the records after its checkpoint)
    tb/                      TensorBoard events (purged past the checkpoint on resume)
    checkpoints/latest       written atomically; ``best-step*`` by validation action error

A directory is created only once the dataset and the policy are built, so bad input never leaves one
behind. A fresh run that fails before its first checkpoint removes the directory it created; one that
fails later keeps it (it can be resumed) with ``status.json`` saying ``failed`` and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lfm_policy.config import atomic_write_text

log = logging.getLogger("lfm_policy.train")

RUN_CONFIG = "train_config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
RUN_FILES = (RUN_CONFIG, STATUS, METRICS, "checkpoints", "tb")

#: Config fields a resumed run may change: they decide where and how fast it runs, not what it learns.
RESUME_MAY_CHANGE = frozenset({
    "out_dir", "device", "compile", "data.num_workers", "log_every", "checkpoint_every",
    "rollout_every", "rollout_task", "rollout_episodes",
})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: Mapping[str, Any], requested: Mapping[str, Any],
                       ignore: Iterable[str] = RESUME_MAY_CHANGE) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, requested value)`` for every dotted field that differs (``ignore`` aside)."""
    a, b = flatten(saved), flatten(requested)
    skip = set(ignore)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]


class RunDir:
    """``out_dir`` of one training run (see the module docstring). Only rank 0 writes to it."""

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.created = False  # this process made the directory (a failure before any checkpoint removes it)
        self.t_start = time.time()

    @property
    def checkpoints(self) -> Path:
        """``out_dir/checkpoints``."""
        return self.path / "checkpoints"

    @property
    def latest(self) -> Path:
        """``out_dir/checkpoints/latest``."""
        return self.checkpoints / "latest"

    def holds_run(self) -> bool:
        """Whether the directory already has a run's files in it."""
        return any((self.path / name).exists() for name in RUN_FILES)

    def has_checkpoint(self) -> bool:
        """Whether ``checkpoints/latest`` exists (a run that can be resumed)."""
        return (self.latest / "train_state.json").is_file()

    def read_status(self) -> dict[str, Any]:
        """``status.json`` (``{}`` when there is none)."""
        try:
            return json.loads((self.path / STATUS).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    # ------------------------------------------------------------------------------ lifecycle
    def check_fresh(self, overwrite: bool) -> None:
        """Refuse to start a new run over an existing one unless ``overwrite`` (then remove its files)."""
        if not self.holds_run():
            return
        if not overwrite:
            state = self.read_status().get("state", "unknown state")
            raise FileExistsError(f"{self.path} already holds a training run ({state}); continue it with "
                                  f"`lfm-policy train --resume {self.path}` or start over with --overwrite")
        if self.writer:
            for name in RUN_FILES:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

    def begin(self, config_json: str, *, resumed_from: int | None) -> None:
        """Create the directory (if needed), write the run config and ``status: running``."""
        if not self.writer:
            return
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / RUN_CONFIG, config_json)
        if resumed_from is not None:
            self.truncate_metrics(resumed_from)
        self.write_status("running", global_step=resumed_from or 0, resumed_from=resumed_from)

    def write_status(self, state: str, **info: Any) -> None:
        """Replace ``status.json`` (atomically)."""
        if not self.writer:
            return
        rec = {"state": state, "pid": os.getpid(), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "wall_s": round(time.time() - self.t_start, 1), **info}
        atomic_write_text(self.path / STATUS, json.dumps(rec, indent=2))

    def fail(self, error: BaseException, global_step: int) -> None:
        """After an exception: remove a fresh directory with no checkpoint, else record the failure."""
        if not self.writer or not self.path.exists():
            return
        if self.created and not self.has_checkpoint():
            shutil.rmtree(self.path, ignore_errors=True)
            return
        state = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        self.write_status(state, global_step=global_step, error=f"{type(error).__name__}: {error}",
                          resume=f"lfm-policy train --resume {self.path}" if self.has_checkpoint() else None)

    def truncate_metrics(self, step: int) -> None:
        """Drop the records logged after ``step`` (the resumed checkpoint), so no step appears twice."""
        path = self.path / METRICS
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line torn by a kill: drop it
                continue
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _fmt_metric(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{name} {value:.4g}"
    return f"{name} {value}"


class RunLog:
    """Metrics to ``metrics.jsonl`` and TensorBoard, and what a person sees while the run goes.

    With ``progress`` one tqdm bar covers the whole run (all stages, with an ETA); validation and
    rollout results are printed above it as they come. Without it, each validation, rollout and stage
    boundary is one log line.
    """

    def __init__(self, run: RunDir, *, progress: bool, total_steps: int, start_step: int, n_stages: int):
        self.run, self.n_stages = run, n_stages
        self.enabled = run.writer
        self._tb = None
        self._bar = None
        if self.enabled and progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self._start_step = start_step
        self._postfix = ""

    def _tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint it resumes from
            self._tb = SummaryWriter(str(self.run.path / "tb"), purge_step=self._start_step + 1)
        return self._tb

    def record(self, rec: dict[str, Any]) -> None:
        """Append ``rec`` to ``metrics.jsonl`` and its numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.run.path / METRICS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        tb = self._tensorboard()
        for k, v in rec.items():
            if k not in ("step", "stage", "stage_step") and isinstance(v, (int, float)) and math.isfinite(v):
                tb.add_scalar(k, v, rec["step"])
        tb.flush()

    def say(self, text: str) -> None:
        """One line for the person watching (above the bar, or a log line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            log.info(text)

    def result(self, rec: dict[str, Any], what: str) -> None:
        """Record a validation / rollout record and print it."""
        self.record(rec)
        body = "  ".join(_fmt_metric(k, v) for k, v in rec.items() if k not in ("step", "stage"))
        self.say(f"step {rec['step']} (stage {rec['stage'] + 1}/{self.n_stages}) {what}: {body}")

    def step(self, stage: int, **postfix: Any) -> None:
        """Advance the bar by one step; ``postfix`` (loss, lr) is shown when given."""
        if self._bar is None:
            return
        self._bar.update(1)
        if postfix:
            self._postfix = f"stage {stage + 1}/{self.n_stages} " + " ".join(f"{k} {v}" for k, v in postfix.items())
            self._bar.set_postfix_str(self._postfix, refresh=False)

    @contextlib.contextmanager
    def busy(self, stage: int, what: str) -> Iterator[None]:
        """Show what the run is doing between steps (validation, checkpoint) so it never looks frozen."""
        if self._bar is None:
            yield
            return
        self._bar.set_postfix_str(f"stage {stage + 1}/{self.n_stages} {what}…", refresh=True)
        try:
            yield
        finally:
            self._bar.set_postfix_str(self._postfix, refresh=False)

    def close(self) -> None:
        """Close the bar and the TensorBoard writer."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
