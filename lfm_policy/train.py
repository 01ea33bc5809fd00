"""Training loop: staged (one stage per LFM block), EMA, AMP, checkpoints, resume, DDP.

``train(config)`` trains a policy on a replay buffer. Stages come from the head (an LFM head has one
per block, trained one after another with ``stage_steps`` each; other heads have one). Within a stage
only that stage's parameters train (and the encoder where ``encoder_training`` says so).
Checkpoints are written atomically to ``out_dir/checkpoints/latest`` every ``checkpoint_every`` steps
and at each stage end; ``best-*`` keep the ``keep_best`` lowest validation action errors of the last
stage. ``resume=True`` continues from ``latest`` — mid-chain, mid-stage — losing at most the steps
since that checkpoint. Launched with ``torchrun``, it trains with DistributedDataParallel (NCCL on
GPU, gloo on CPU); rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lfm_policy.config import Config, check
from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.fit import cosine_with_warmup
from lfm_policy.policy import Policy, PolicyConfig, PolicySpec

log = logging.getLogger(__name__)


@dataclass
class DataConfig(Config):
    """Where the demonstrations are and how they are split."""

    path: str = ""
    obs_keys: tuple[str, ...] = ()
    action_key: str = "action"
    val_ratio: float = 0.1
    max_train_episodes: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.obs_keys = tuple(self.obs_keys)
        check(0 <= self.val_ratio < 1, "val_ratio", f"must be in [0, 1), got {self.val_ratio}")
        check(self.num_workers >= 0, "num_workers", "must be ≥ 0")


@dataclass
class OptimConfig(Config):
    """AdamW with linear warm-up and cosine decay per stage (Diffusion Policy's defaults)."""

    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 500
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check(self.lr > 0, "lr", "must be > 0")
        check(self.warmup_steps >= 0, "warmup_steps", "must be ≥ 0")
        check(self.grad_clip >= 0, "grad_clip", "must be ≥ 0 (0 disables clipping)")


@dataclass
class TrainConfig(Config):
    """Everything ``lfm-policy train`` reads.

    Attributes:
        total_steps: Optimizer steps over all stages (split evenly, so LFM and FM get equal budgets).
        stage_steps: Explicit steps per stage (overrides ``total_steps``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda[:i]``.
        amp: bf16 autocast on CUDA.
        compile: ``torch.compile`` the policy's training forward.
        val_every / val_batches: Validation cadence and size (loss, action error, NLL of flow heads).
        checkpoint_every: Steps between ``latest`` checkpoints.
        keep_best: Best checkpoints (by validation action error in the last stage) to keep.
        rollout_every: Roll the policy out on ``rollout_task`` every this many steps once the head can
            sample (an LFM head: after its last block), and always at the end; 0 disables rollouts.
        rollout_task: Registered task for those rollouts (``lfm_policy.eval.Evaluator``; seeds from 100000).
        rollout_episodes: Episodes per rollout evaluation.

    """

    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs/default"
    total_steps: int = 20000
    stage_steps: tuple[int, ...] | None = None
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    log_every: int = 50
    val_every: int = 1000
    val_batches: int = 4
    checkpoint_every: int = 1000
    keep_best: int = 2
    rollout_every: int = 0
    rollout_task: str = ""
    rollout_episodes: int = 10

    def __post_init__(self) -> None:
        check(self.total_steps >= 1, "total_steps", "must be ≥ 1")
        if self.stage_steps is not None:
            self.stage_steps = tuple(int(s) for s in self.stage_steps)
            check(all(s >= 1 for s in self.stage_steps), "stage_steps", "every entry must be ≥ 1")
        check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        for name in ("log_every", "val_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, name, "must be ≥ 1")
        check(self.keep_best >= 0, "keep_best", "must be ≥ 0")
        check(self.rollout_every >= 0 and self.rollout_episodes >= 1, "rollout_every/rollout_episodes",
              "rollout_every must be ≥ 0 and rollout_episodes ≥ 1")
        check(not self.rollout_every or bool(self.rollout_task), "rollout_task", "needed when rollout_every > 0")

    def steps_for(self, n_stages: int) -> list[int]:
        """Steps of each stage."""
        if self.stage_steps is not None:
            if len(self.stage_steps) != n_stages:
                raise LfmPolicyError(f"stage_steps has {len(self.stage_steps)} entries for {n_stages} stages")
            return list(self.stage_steps)
        return [max(1, self.total_steps // n_stages)] * n_stages


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {"obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
            "action": batch["action"].to(device, non_blocking=True),
            "action_is_pad": batch["action_is_pad"].to(device, non_blocking=True)}


class Trainer:
    """Stateful trainer; :func:`train` is the one-call entry point."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True):
        from lfm_policy.datasets.torch_dataset import SequenceDataset
        from lfm_policy.normalizer import LinearNormalizer

        self.config, self.progress_bar = config, progress
        self.dist = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.dist and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        self.rank = torch.distributed.get_rank() if self.dist else 0
        self.device = _device(config.device)
        if self.device.type == "cuda" and self.dist:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.manual_seed(config.seed + self.rank)
        self.out = Path(config.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            config.to_json(self.out / "train_config.json")

        d, p = config.data, config.policy
        if not d.path:
            raise LfmPolicyError("data.path: no dataset given")
        self.dataset = SequenceDataset(
            d.path, obs_keys=list(d.obs_keys) or self._default_obs_keys(d.path, d.action_key),
            action_key=d.action_key, n_obs_steps=p.n_obs_steps, horizon=p.horizon, n_action_steps=p.n_action_steps,
            split="train", val_ratio=d.val_ratio, seed=config.seed, max_train_episodes=d.max_train_episodes)
        self.val_dataset = self.dataset.get_validation_dataset() if d.val_ratio > 0 else None
        image_keys = tuple(self.dataset.image_keys)
        stats = self.dataset.get_stats()
        stats = {("action" if k == d.action_key else k): v for k, v in stats.items() if k not in image_keys}
        normalizer = LinearNormalizer.from_stats(stats)
        obs_shapes = {k: (s[1], s[2], s[0]) if k in image_keys else s for k, s in self.dataset.obs_shapes.items()}
        spec = PolicySpec(obs_shapes=obs_shapes, image_keys=image_keys, action_dim=self.dataset.action_dim)
        self.policy = Policy(p, spec, normalizer).to(self.device)
        self.stage_steps = config.steps_for(self.policy.head.n_stages)
        self.progress = {"stage": 0, "stage_step": 0, "global_step": 0, "epoch": 0, "stage_started": False,
                         "best": []}
        self.resume = resume
        self._pending_train_state: Path | None = None  # optimizer state to restore when the stage starts

    @staticmethod
    def _default_obs_keys(path: str, action_key: str) -> list[str]:
        from lfm_policy.datasets.replay_buffer import ReplayBuffer

        keys = ReplayBuffer.open(path).keys
        return [k for k in keys if k != action_key]

    # ------------------------------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train every remaining stage; returns the ``latest`` checkpoint path."""
        start_stage = 0
        if self.resume and (self.ckpt_dir / "latest").exists():
            state = self._load_latest()
            self.progress.update(state)
            start_stage = self.progress["stage"]
            log.info("resuming at stage %d step %d", start_stage, self.progress["stage_step"])
        for stage in range(start_stage, self.policy.head.n_stages):
            self._run_stage(stage)
        return self.ckpt_dir / "latest"

    def _run_stage(self, stage: int) -> None:
        cfg, policy = self.config, self.policy
        steps = self.stage_steps[stage]
        if self.progress["stage"] != stage or not self.progress["stage_started"]:
            policy.begin_stage(stage)
            self.progress.update(stage=stage, stage_step=0, stage_started=True)
        params = policy.stage_parameters(stage)
        policy.requires_grad_(False)
        for prm in params:
            prm.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, steps, min(cfg.optim.warmup_steps, steps // 10)))
        if self._pending_train_state is not None:
            from lfm_policy.train_state import load_train_state

            load_train_state(self._pending_train_state, optimizer=opt, scheduler=sched)
            self._pending_train_state = None
        model: Any = policy
        if self.dist:
            model = torch.nn.parallel.DistributedDataParallel(
                policy, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        forward = torch.compile(model) if cfg.compile else model
        loader = self._loader()
        it = iter(loader)
        policy.train()
        bar = self._bar(stage, steps)
        t_last, n_last = time.perf_counter(), self.progress["stage_step"]
        while self.progress["stage"] == stage and self.progress["stage_step"] < steps:
            try:
                batch = next(it)
            except StopIteration:
                self.progress["epoch"] += 1
                loader = self._loader()
                it = iter(loader)
                continue
            batch = _to_device(batch, self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and self.device.type == "cuda"):
                loss = forward(batch, stage=stage)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 \
                else torch.zeros(())
            opt.step()
            sched.step()
            policy.after_step(stage)
            self.progress["stage_step"] += 1
            self.progress["global_step"] += 1
            step = self.progress["stage_step"]
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == steps:
                now = time.perf_counter()
                rec = {"step": self.progress["global_step"], "stage": stage, "stage_step": step,
                       "loss": loss.item(), "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "it_s": (step - n_last) / max(now - t_last, 1e-9)}
                t_last, n_last = now, step
                self._log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            last = step == steps
            if last:
                policy.end_stage(stage)
                self.progress.update(stage=stage + 1, stage_step=0, stage_started=False)
            if (step % cfg.val_every == 0 or last) and self.val_dataset is not None:
                self._validate(stage, final_stage=stage == policy.head.n_stages - 1 and last)
                policy.train()
            if step % cfg.checkpoint_every == 0 or last:
                self._save_latest(opt, sched)
            final = last and stage == policy.head.n_stages - 1
            if cfg.rollout_every and policy.head.ready and (self.progress["global_step"] % cfg.rollout_every == 0
                                                            or final):
                self._rollout(stage)
                policy.train()
        if bar is not None:
            bar.close()

    def _loader(self) -> torch.utils.data.DataLoader:
        """Shuffled batches for this epoch (one vectorized gather per batch; DistributedSampler under DDP)."""
        sampler = None
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + self.progress["epoch"])
        if self.dist:
            sampler = torch.utils.data.distributed.DistributedSampler(self.dataset, seed=self.config.seed)
            sampler.set_epoch(self.progress["epoch"])
        return self.dataset.make_loader(self.config.batch_size, shuffle=True, generator=gen, sampler=sampler,
                                        num_workers=self.config.data.num_workers,
                                        pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def _validate(self, stage: int, *, final_stage: bool) -> None:
        from lfm_policy.flow.likelihood import log_prob

        policy = self.policy.eval()
        loader = self.val_dataset.make_loader(self.config.batch_size, shuffle=False, drop_last=False)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        losses, errors, nlls = [], [], []
        complete = policy.head.ready  # a chain with untrained blocks cannot sample yet
        for i, batch in enumerate(loader):
            if i >= self.config.val_batches:
                break
            batch = _to_device(batch, self.device)
            loss, _ = policy.compute_loss(batch, stage=min(stage, policy.head.n_stages - 1), generator=gen)
            losses.append(loss.item())
            if complete:
                cond = policy.encode(batch["obs"])  # once for the prediction and the NLL
                pred = policy.sample_chunk(cond, generator=gen)
                errors.append(torch.mean((pred - batch["action"]) ** 2).item())
                if hasattr(policy.head, "chain"):
                    target = policy.normalizer.normalize_key("action", batch["action"])
                    nlls.append(-log_prob(policy.head.chain, target, cond, generator=gen).mean().item())
        rec: dict[str, Any] = {"step": self.progress["global_step"], "stage": stage,
                               "val_loss": sum(losses) / max(1, len(losses))}
        if errors:
            rec["val_action_mse"] = sum(errors) / len(errors)
        if nlls:
            rec["val_nll"] = sum(nlls) / len(nlls)
        self._log(rec)
        if final_stage and errors:
            self._maybe_keep_best(rec["val_action_mse"])

    def _rollout(self, stage: int) -> None:
        """Success rate on ``rollout_task`` (envs kept alive between calls), logged to metrics.jsonl."""
        if self.rank != 0:
            return
        from lfm_policy.eval.rollout import EvalConfig, Evaluator

        if not hasattr(self, "_evaluator"):
            self._evaluator = Evaluator(EvalConfig(task=self.config.rollout_task))
        summary = self._evaluator.run(self.policy, self.config.rollout_episodes).summary()
        self._log({"step": self.progress["global_step"], "stage": stage,
                   "rollout_success_rate": summary["success_rate"], "rollout_success_ci95": summary["success_ci95"],
                   "rollout_mean_length": summary["mean_length"], "rollout_episodes": summary["n_episodes"]})

    # ----------------------------------------------------------------------------- checkpoints
    def _save_latest(self, opt: torch.optim.Optimizer, sched: Any) -> None:
        if self.rank != 0:
            return
        from lfm_policy.train_state import save_train_state

        self.policy.save(self.ckpt_dir / "latest", metadata={"progress": self.progress},
                         write_extra=lambda d: save_train_state(d, optimizer=opt, scheduler=sched,
                                                                progress=self.progress))

    def _maybe_keep_best(self, metric: float) -> None:
        if self.rank != 0 or self.config.keep_best == 0:
            return
        best = self.progress["best"]
        name = f"best-step{self.progress['global_step']}"
        if len(best) < self.config.keep_best or metric < max(m for m, _ in best):
            self.policy.save(self.ckpt_dir / name, metadata={"val_action_mse": metric, "progress": self.progress})
            best.append([metric, name])
            best.sort()
            for _, drop in best[self.config.keep_best:]:
                shutil.rmtree(self.ckpt_dir / drop, ignore_errors=True)
            del best[self.config.keep_best:]

    def _load_latest(self) -> dict:
        from safetensors.torch import load_file

        from lfm_policy.train_state import load_train_state

        path = self.ckpt_dir / "latest"
        state = load_file(str(path / "model.safetensors"), device=str(self.device))
        self.policy.load_state_dict(state)
        progress = load_train_state(path)
        self._pending_train_state = path if progress.get("stage_started") else None
        return progress

    # --------------------------------------------------------------------------------- logging
    def _log(self, rec: dict) -> None:
        if self.rank != 0:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if not hasattr(self, "_tb"):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"))
        for k, v in rec.items():
            if k not in ("step", "stage", "stage_step") and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, rec["step"])
        self._tb.flush()

    def _bar(self, stage: int, steps: int):
        if not self.progress_bar or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, initial=self.progress["stage_step"], desc=f"stage {stage + 1}/"
                    f"{self.policy.head.n_stages}", dynamic_ncols=True)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a policy; returns the path of the final (``latest``) checkpoint."""
    trainer = Trainer(config, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        if hasattr(trainer, "_tb"):
            trainer._tb.close()
        if hasattr(trainer, "_evaluator"):
            trainer._evaluator.close()
        if trainer.dist and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

