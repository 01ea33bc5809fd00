"""``lfm-policy distill``: turn a trained ``lfm`` / ``fm`` policy into one whose blocks are one-step students.

Distillation is a training run (:func:`lfm_policy.train.train`) whose stages are the students
(:mod:`lfm_policy.flow.distill`): the run starts from the teacher checkpoint (``init_from``), its
policy config is the teacher's with ``head.distill`` set, and it keeps everything a training run has —
the run directory, progress bar, ``metrics.jsonl``, checkpoints and ``--resume`` after a kill. The
result is an ordinary checkpoint: ``Policy.load``, ``predict_action_chunk``, ``lfm-policy eval``;
``policy.nfe()`` is N × k. :func:`distill_summary` measures students against the teacher on held-out
observations and is written to ``OUT/distill_summary.json`` at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lfm_policy.config import atomic_write_text
from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.distill import (
    DistillConfig,
    choose_teacher_steps,
    student_path_pair,
    teacher_path_pair,
    teacher_solvers,
)
from lfm_policy.flow.distill import teacher_solver as block_teacher_solver
from lfm_policy.flow.solvers import STUDENT, SolverConfig
from lfm_policy.train import TrainConfig, training_windows

SUMMARY = "distill_summary.json"


def teacher_run_config(checkpoint: Path) -> TrainConfig | None:
    """The training config of the run a checkpoint belongs to (``RUN/checkpoints/NAME``), if any."""
    path = checkpoint.resolve().parent.parent / "train_config.json"
    return TrainConfig.from_json(path) if path.is_file() else None


def _windows(config: TrainConfig, policy: Any, split: str, n: int, seed: int = 0) -> dict[str, Any]:
    """Up to ``n`` windows of ``split`` (``train``/``val``) as a batch dict on the policy's device."""
    ds = training_windows(config.replace(policy=policy.config), list(policy.spec.obs_shapes))  # the policy's windows
    if split == "val" and config.data.val_ratio > 0:
        ds = ds.get_validation_dataset()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(n, len(ds))].tolist()
    batch = ds[idx]
    dev = policy.device
    return {"obs": {k: v.to(dev) for k, v in batch["obs"].items()}, "action": batch["action"].to(dev)}


def setup_distillation(checkpoint: str | os.PathLike, out: str | os.PathLike, *, steps: int = 2000,
                       block_steps: int = 1, blocks: Sequence[int] | None = None, inputs: str = "student_path",
                       sample: Sequence[SolverConfig] | None = None, data: str | None = None,
                       batch_size: int | None = None, lr: float = 3e-4, tolerance: float = 0.01,
                       overrides: Sequence[str] = ()) -> TrainConfig:
    """The training config of a distillation of ``checkpoint`` into ``out`` (teacher solver steps chosen here).

    Args:
        checkpoint: A trained ``lfm`` or ``fm`` checkpoint (every block trained).
        out: Run directory of the distillation.
        steps: Optimizer steps per student.
        block_steps: Euler steps of each student (its NFE).
        blocks: Blocks to distill (default all).
        inputs: ``teacher_path`` or ``student_path`` (:mod:`lfm_policy.flow.distill`).
        sample: Default solver per block of the result (default: ``student`` where distilled, the
            teacher's own sampler elsewhere).
        data: Demonstrations (default: the teacher run's ``data.path``).
        batch_size: Default: the teacher run's.
        lr: AdamW learning rate of the students.
        tolerance: Accuracy of the teacher's RK4 maps (:func:`choose_teacher_steps`).
        overrides: ``key=value`` overrides of the resulting config.

    Raises:
        LfmPolicyError: Not a flow head, an untrained teacher, no data to distill on.

    """
    from lfm_policy import Policy
    from lfm_policy.checkpoint import WEIGHTS, sha256_file

    checkpoint = Path(checkpoint)
    teacher = Policy.load(checkpoint)
    head = teacher.config.head
    if head.kind not in ("lfm", "fm"):
        raise LfmPolicyError(f"{checkpoint}: a {head.kind!r} head cannot be distilled here (lfm or fm)")
    if head.distill is not None:
        raise LfmPolicyError(f"{checkpoint}: already distilled (from {head.distill.teacher}); distill its teacher")
    chain = teacher.head.chain
    if int(chain.n_trained) < chain.n_blocks:
        raise LfmPolicyError(f"{checkpoint}: only {int(chain.n_trained)} of {chain.n_blocks} blocks are trained")
    base = teacher_run_config(checkpoint)
    if base is None and data is None:
        raise LfmPolicyError(f"{checkpoint}: not inside a training run (no ../../train_config.json); give --data")
    base = base or TrainConfig()
    dcfg = DistillConfig(blocks=tuple(blocks) if blocks is not None else None, steps=block_steps, inputs=inputs,
                         tolerance=tolerance, teacher=str(checkpoint), teacher_sha256=sha256_file(checkpoint / WEIGHTS))
    order = dcfg.block_list(chain.n_blocks)
    run = base.replace(data=base.data.replace(path=data) if data else base.data)
    probe = _windows(run, teacher, "train", 256)
    with torch.no_grad():
        cond = teacher.encode(probe["obs"])
        x = teacher.normalizer.normalize_key("action", probe["action"].float())
        dcfg = dcfg.replace(teacher_steps=tuple(choose_teacher_steps(chain, x, cond, tolerance=tolerance)))
    own = chain.config.sample_solver
    default = [SolverConfig(method=STUDENT) if n in order else own for n in range(chain.n_blocks)]
    chain_cfg = head.chain.replace(n_blocks=chain.n_blocks, gammas=chain.config.gammas,
                                   student_steps=tuple(block_steps if n in order else 0 for n in range(chain.n_blocks)),
                                   sample_solvers=tuple(sample or default))
    policy_cfg = teacher.config.replace(head=head.replace(chain=chain_cfg, distill=dcfg))
    n = len(order)
    cfg = run.replace(policy=policy_cfg, out_dir=str(out), init_from=str(checkpoint), total_steps=steps * n,
                      stage_steps=(steps,) * n, batch_size=batch_size or run.batch_size,
                      optim=run.optim.replace(lr=lr, warmup_steps=min(200, steps // 10)),
                      val_every=max(1, min(run.val_every, steps)),
                      checkpoint_every=max(1, min(run.checkpoint_every, steps)),
                      keep_best=1, rollout_every=0,
                      about=f"{head.kind} distilled from {checkpoint} ({n} student(s), {block_steps} step(s) each)")
    return cfg.with_overrides(list(overrides))


@torch.no_grad()
def distill_summary(policy: Any, config: TrainConfig, *, n_windows: int = 256, seed: int = 0) -> dict[str, Any]:
    """Students vs teacher on held-out observations (RMS in normalized action units), per block and chunk.

    Per distilled block: the student's error on exact teacher pairs (``teacher_path``) and on its own
    path (``student_path``), and the error of the teacher's own Euler-k map (where the student started).
    Whole chunk: the distilled chain's default sampler and the teacher's own sampler, each against the
    teacher chain with its accurate RK4 maps, from the same noise.
    """
    head, chain = policy.head, policy.head.chain
    dcfg = policy.config.head.distill
    batch = _windows(config, policy, "val", n_windows, seed)
    cond = policy.encode(batch["obs"])
    x = policy.normalizer.normalize_key("action", batch["action"].float())
    g = torch.Generator(device=x.device).manual_seed(seed)

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).pow(2).mean().sqrt())

    blocks = []
    for n in sorted(head.order):
        solver = block_teacher_solver(dcfg, n)
        euler = SolverConfig(method="euler", steps=chain.config.student(n))
        x_in, target = teacher_path_pair(chain, n, x, cond, teacher_solvers(dcfg, chain.n_blocks))
        student = chain.reverse_block(n, x_in, cond, SolverConfig(method=STUDENT))
        start = chain.ema_blocks[n].reverse_transport(x_in, cond, euler)
        sp_in, sp_target = student_path_pair(chain, n, cond, solver, generator=g)
        sp_student = chain.reverse_block(n, sp_in, cond, SolverConfig(method=STUDENT))
        blocks.append({"block": n, "teacher_rk4_steps": solver.steps, "rms_teacher_path": rms(student, target),
                       "rms_student_path": rms(sp_student, sp_target), "rms_teacher_euler": rms(start, target),
                       "target_rms": float(target.pow(2).mean().sqrt())})
    z = torch.randn(x.shape, generator=g, device=x.device)
    accurate = [block_teacher_solver(dcfg, n) for n in range(chain.n_blocks)]
    reference = chain.sample(cond, noise=z, solver=accurate)
    distilled = chain.sample(cond, noise=z)
    teacher_own = chain.sample(cond, noise=z, solver=policy.config.head.chain.sample_solver
                               if policy.config.head.chain.sample_solver.method != STUDENT else None)
    return {"blocks": blocks, "n_windows": int(x.shape[0]), "nfe": policy.nfe(),
            "teacher_nfe_accurate": chain.nfe(accurate),
            "chunk_rms_distilled": rms(distilled, reference), "chunk_rms_teacher_sampler": rms(teacher_own, reference),
            "chunk_rms_data": rms(reference, x),
            "teacher": dcfg.teacher, "teacher_sha256": dcfg.teacher_sha256, "inputs": dcfg.inputs}


def stage_wall_times(out: Path, order: Sequence[int]) -> dict[int, float]:
    """Wall seconds spent on each block's student (from ``metrics.jsonl``'s ``stage_wall_s`` records)."""
    times: dict[int, float] = {}
    path = out / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        rec = json.loads(line)
        if "stage_wall_s" in rec:
            block = order[rec["stage"]]
            times[block] = times.get(block, 0.0) + rec["stage_wall_s"]
    return times


def write_summary(policy: Any, config: TrainConfig) -> dict[str, Any]:
    """Compute :func:`distill_summary`, add wall times, write ``OUT/distill_summary.json``; return it."""
    t0 = time.perf_counter()
    summary = distill_summary(policy, config)
    walls = stage_wall_times(Path(config.out_dir), policy.head.order)
    for b in summary["blocks"]:
        b["wall_s"] = round(walls.get(b["block"], math.nan), 1)
    summary["summary_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(Path(config.out_dir) / SUMMARY, json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table."""
    lines = ["block  RK4 steps  student vs teacher (teacher path / student path)  teacher Euler  target RMS  wall s"]
    for b in summary["blocks"]:
        lines.append(f"{b['block']:>5}  {b['teacher_rk4_steps']:>9}  {b['rms_teacher_path']:>22.4f} / "
                     f"{b['rms_student_path']:<20.4f}  {b['rms_teacher_euler']:>13.4f}  {b['target_rms']:>10.4f}  "
                     f"{b.get('wall_s', math.nan):>6}")
    lines.append(f"chunk (NFE {summary['nfe']}): distilled vs accurate teacher {summary['chunk_rms_distilled']:.4f}; "
                 f"teacher's own sampler vs accurate {summary['chunk_rms_teacher_sampler']:.4f}; accurate teacher vs "
                 f"data {summary['chunk_rms_data']:.4f} (RMS, normalized action units, {summary['n_windows']} "
                 "held-out windows)")
    return "\n".join(lines)

