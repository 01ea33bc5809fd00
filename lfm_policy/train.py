"""Training loop: staged (one stage per LFM block), EMA, AMP, checkpoints, resume, DDP.

``train(config)`` trains a policy on a replay buffer. Stages come from the policy (an LFM head has one
per block, trained one after another with ``stage_steps`` each, after the encoder's own FM stage with
``encoder_training=fm_first``; other heads have one). Within a stage
only that stage's parameters train (and the encoder where ``encoder_training`` says so).
Checkpoints are written atomically to ``out_dir/checkpoints/latest`` every ``checkpoint_every`` steps
and at each stage end; ``best-*`` keep the ``keep_best`` lowest validation action errors among the
validations of the last stage. ``resume=True`` continues the run saved in ``out_dir`` from ``latest``
— mid-chain, mid-stage — losing at most the steps since that checkpoint; its config must equal the
saved ``train_config.json`` (see :mod:`lfm_policy.train_run` for the run directory and its checks).
Launched with ``torchrun``, it trains with DistributedDataParallel (NCCL on GPU, gloo on CPU); rank 0
writes logs and checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lfm_policy.checkpoint import init_encoder, init_weights
from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.fit import cosine_with_warmup
from lfm_policy.flow.solvers import SolverConfig
from lfm_policy.policy import Policy, PolicySpec
from lfm_policy.train_config import DataConfig, OptimConfig, TrainConfig
from lfm_policy.train_run import RUN_CONFIG, RunDir, RunLog, config_differences

log = logging.getLogger(__name__)

#: Validation NLL (first validation batch): RK4 × 8 per block; exact divergence up to 32 dims, else
#: Hutchinson with 4 probes. With point masses in the actions (gripper at ±1, clipped actions) the
#: density is not finite and the forward maps are stiff, so the value keeps moving with more steps (toy
#: task, one batch of 128: −104 with midpoint × 1, −97 RK4 × 4, −80 RK4 × 8, −68 RK4 × 16): compare it
#: only between runs at this fixed solver.
NLL_SOLVER = SolverConfig(method="rk4", steps=8)
NLL_PROBES = 4

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "Trainer", "resume_config", "train", "training_windows"]


def training_windows(config: TrainConfig, obs_keys: list[str]) -> Any:
    """The training split of ``config.data`` as ``SequenceDataset`` windows of ``config.policy``.

    Its ``get_validation_dataset()`` is the validation split (``data.val_ratio``, seeded by ``seed``);
    both are restricted to the episodes of ``data.filter_key`` when it is set.
    """
    from lfm_policy.datasets.torch_dataset import SequenceDataset

    d, p = config.data, config.policy
    return SequenceDataset(d.path, obs_keys=list(obs_keys), action_key=d.action_key, n_obs_steps=p.n_obs_steps,
                           horizon=p.horizon, n_action_steps=p.n_action_steps, split="train",
                           val_ratio=d.val_ratio, seed=config.seed, max_train_episodes=d.max_train_episodes,
                           filter_key=d.filter_key)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {"obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
            "action": batch["action"].to(device, non_blocking=True),
            "action_is_pad": batch["action_is_pad"].to(device, non_blocking=True)}


class Trainer:
    """Stateful trainer; :func:`train` is the one-call entry point.

    Args:
        config: The run config.
        resume: Continue the run in ``config.out_dir`` from its ``latest`` checkpoint. The config must
            equal the run's saved ``train_config.json`` except for :data:`RESUME_MAY_CHANGE` fields.
        overwrite: Start a new run even if ``out_dir`` holds one (its run files are removed).
        progress: One tqdm bar for the whole run; without it, one log line per validation.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and neither ``resume`` nor ``overwrite``.
        LfmPolicyError: Nothing to resume, or the config differs from the saved one (fields named).

    """

    def __init__(self, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True):
        from lfm_policy.normalizer import LinearNormalizer

        self.config, self.show_progress = config, progress
        self.dist = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.dist and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        self.rank = torch.distributed.get_rank() if self.dist else 0
        self.run_dir = RunDir(config.out_dir, writer=self.rank == 0)
        self.resume = resume
        if resume:
            check_resumable(self.run_dir, config)
        elif self.rank == 0:
            self.run_dir.check_fresh(overwrite)
        self.device = _device(config.device)
        if self.device.type == "cuda" and self.dist:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.manual_seed(config.seed + self.rank)
        self.ckpt_dir = self.run_dir.checkpoints

        d, p = config.data, config.policy
        if not d.path:
            raise LfmPolicyError("data.path: no dataset given")
        self.dataset = training_windows(config, list(d.obs_keys) or self._default_obs_keys(d.path, d.action_key))
        if len(self.dataset) < config.batch_size:
            raise LfmPolicyError(f"{d.path}: {len(self.dataset)} training windows, fewer than batch_size="
                                 f"{config.batch_size} (full batches only); lower batch_size or add demonstrations")
        self.val_dataset = self.dataset.get_validation_dataset() if d.val_ratio > 0 else None
        if d.filter_key:
            n_val = len(self.val_dataset.episodes) if self.val_dataset is not None else 0
            log.info("data.filter_key %r: %d training and %d validation episodes of %d", d.filter_key,
                     len(self.dataset.episodes), n_val, self.dataset.buffer.n_episodes)
        image_keys = tuple(self.dataset.image_keys)
        stats = self.dataset.get_stats()
        stats = {("action" if k == d.action_key else k): v for k, v in stats.items() if k not in image_keys}
        normalizer = LinearNormalizer.from_stats(stats)
        obs_shapes = {k: (s[1], s[2], s[0]) if k in image_keys else s for k, s in self.dataset.obs_shapes.items()}
        spec = PolicySpec(obs_shapes=obs_shapes, image_keys=image_keys, action_dim=self.dataset.action_dim)
        self.policy = Policy(p, spec, normalizer).to(self.device)
        if config.init_from and not resume:
            init_weights(self.policy, config.init_from, map_location=str(self.device))
        if config.init_encoder_from and not resume:
            init_encoder(self.policy, config.init_encoder_from, map_location=str(self.device))
        self.stage_steps = config.steps_for(self.policy.n_stages, self.policy.stage_shares)
        self.progress = {"stage": 0, "stage_step": 0, "global_step": 0, "epoch": 0, "stage_started": False,
                         "best": []}
        self._pending_train_state: Path | None = None  # optimizer state to restore when the stage starts
        self.log: RunLog | None = None

    @staticmethod
    def _default_obs_keys(path: str, action_key: str) -> list[str]:
        from lfm_policy.datasets.replay_buffer import ReplayBuffer

        keys = ReplayBuffer.open(path).keys
        return [k for k in keys if k != action_key]

    # ------------------------------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train every remaining stage; returns the ``latest`` checkpoint path."""
        cfg, n_stages = self.config, self.policy.n_stages
        resumed = None
        if self.resume:
            self.progress.update(self._load_latest())
            resumed = self.progress["global_step"]
        self.run_dir.begin(cfg.to_json(), resumed_from=resumed)
        if cfg.sized_for == "gpu" and self.device.type == "cpu":
            log.warning("%s: this config is sized for a GPU%s; on this CPU it will be slow (see configs/*_cpu.json)",
                        cfg.out_dir, f" ({cfg.about})" if cfg.about else "")
        self.log = RunLog(self.run_dir, progress=self.show_progress, total_steps=sum(self.stage_steps),
                          start_step=self.progress["global_step"], n_stages=n_stages)
        p = self.progress
        if resumed is not None:
            stage = min(p["stage"], n_stages - 1)
            self.log.say(f"resuming {self.run_dir.path} at global step {p['global_step']}/{sum(self.stage_steps)}: "
                         f"stage {stage + 1}/{n_stages}, step {p['stage_step']}/{self.stage_steps[stage]} of the stage")
        try:
            for stage in range(p["stage"], n_stages):
                self._run_stage(stage)
        finally:
            self.log.close()
        best = [name for _, name in p["best"]]
        self.run_dir.write_status("complete", global_step=p["global_step"], best=best)
        return self.ckpt_dir / "latest"

    def _run_stage(self, stage: int) -> None:
        cfg, policy = self.config, self.policy
        n_stages = policy.n_stages
        steps = self.stage_steps[stage]
        if self.progress["stage"] != stage or not self.progress["stage_started"]:
            policy.begin_stage(stage)
            self.progress.update(stage=stage, stage_step=0, stage_started=True)
            if n_stages > 1:
                self.log.say(f"stage {stage + 1}/{n_stages}: {steps} steps")
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
        it = iter(self._loader())
        policy.train()
        t_last, n_last = time.perf_counter(), self.progress["stage_step"]
        t_stage = t_last
        while self.progress["stage"] == stage and self.progress["stage_step"] < steps:
            try:
                batch = next(it)
            except StopIteration:
                self.progress["epoch"] += 1
                it = iter(self._loader())
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
            if step % cfg.log_every == 0 or step == steps:
                now = time.perf_counter()
                rec = {"step": self.progress["global_step"], "stage": stage, "stage_step": step,
                       "loss": loss.item(), "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "it_s": (step - n_last) / max(now - t_last, 1e-9)}
                t_last, n_last = now, step
                if self.rank == 0:
                    self.log.record(rec)
                self.log.step(stage, loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.1e}")
            else:
                self.log.step(stage)
            last = step == steps
            if last:
                if self.rank == 0:  # this process's share of the stage (a resumed stage logs two records)
                    self.log.record({"step": self.progress["global_step"], "stage": stage,
                                     "stage_wall_s": round(time.perf_counter() - t_stage, 2)})
                policy.end_stage(stage)
                self.progress.update(stage=stage + 1, stage_step=0, stage_started=False)
            if (step % cfg.val_every == 0 or last) and self.val_dataset is not None:
                with self.log.busy(stage, "validating"):
                    self._validate(stage, final=last and stage == n_stages - 1)
                policy.train()
            if step % cfg.checkpoint_every == 0 or last:
                with self.log.busy(stage, "saving checkpoint"):
                    self._save_latest(opt, sched)
            final = last and stage == n_stages - 1
            if cfg.rollout_every and policy.head.ready and (self.progress["global_step"] % cfg.rollout_every == 0
                                                            or final):
                with self.log.busy(stage, "rolling out"):
                    self._rollout(stage)
                policy.train()

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
    def _validate(self, stage: int, *, final: bool) -> None:
        """Validation loss; action error once the head can sample; NLL (flow heads) at the end of the run.

        ``val_action_mse`` is in raw (unnormalized) action units, ``val_action_mse_normalized`` in the
        normalizer's units (actions mapped to [-1, 1]). ``val_nll`` (nats per chunk, normalized units)
        integrates the blocks' ODEs accurately (:data:`NLL_SOLVER`, whatever the sampler; a distilled
        chain's students have no density, so it is its teacher's). The head samples with its EMA weights from the
        last stage on (an LFM head: while its free block trains, with that block's EMA copy).
        """
        from lfm_policy.flow.likelihood import log_prob

        if self.rank != 0:
            return
        policy = self.policy.eval()
        loader = self.val_dataset.make_loader(self.config.batch_size, shuffle=False, drop_last=False)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        losses, errors, errors_norm, nlls = [], [], [], []
        can_sample = policy.head.ready
        for i, batch in enumerate(loader):
            if i >= self.config.val_batches:
                break
            batch = _to_device(batch, self.device)
            loss, _ = policy.compute_loss(batch, stage=min(stage, policy.n_stages - 1), generator=gen)
            losses.append(loss.item())
            if can_sample:
                cond = policy.encode(batch["obs"])  # once for the prediction and the NLL
                pred = policy.sample_chunk(cond, generator=gen)
                errors.append(torch.mean((pred - batch["action"]) ** 2).item())
                norm = policy.normalizer
                errors_norm.append(torch.mean((norm.normalize_key("action", pred)
                                               - norm.normalize_key("action", batch["action"])) ** 2).item())
                if final and i == 0 and hasattr(policy.head, "chain"):  # one batch: RK4 with exact divergence is costly
                    target = policy.normalizer.normalize_key("action", batch["action"])
                    nlls.append(-log_prob(policy.head.chain, target, cond, solver=NLL_SOLVER, n_probes=NLL_PROBES,
                                          generator=gen).mean().item())
        rec: dict[str, Any] = {"step": self.progress["global_step"], "stage": stage,
                               "val_loss": sum(losses) / max(1, len(losses))}
        if errors:
            rec["val_action_mse"] = sum(errors) / len(errors)
            rec["val_action_mse_normalized"] = sum(errors_norm) / len(errors_norm)
        if nlls:
            rec["val_nll"] = sum(nlls) / len(nlls)
        self.log.result(rec, "validation")
        if errors and stage == policy.n_stages - 1:
            self._maybe_keep_best(rec["val_action_mse"])

    def _rollout(self, stage: int) -> None:
        """Success rate on ``rollout_task`` (envs kept alive between calls), logged to metrics.jsonl."""
        if self.rank != 0:
            return
        from lfm_policy.eval.rollout import EvalConfig, Evaluator

        if not hasattr(self, "_evaluator"):
            self._evaluator = Evaluator(EvalConfig(task=self.config.rollout_task))
        summary = self._evaluator.run(self.policy, self.config.rollout_episodes).summary()
        self.log.result({"step": self.progress["global_step"], "stage": stage,
                         "rollout_success_rate": summary["success_rate"],
                         "rollout_success_ci95": summary["success_ci95"],
                         "rollout_mean_length": summary["mean_length"],
                         "rollout_episodes": summary["n_episodes"]}, "rollout")

    # ----------------------------------------------------------------------------- checkpoints
    def _save_latest(self, opt: torch.optim.Optimizer, sched: Any) -> None:
        if self.rank != 0:
            return
        from lfm_policy.train_state import save_train_state

        self.policy.save(self.ckpt_dir / "latest", metadata={"progress": self.progress},
                         write_extra=lambda d: save_train_state(d, optimizer=opt, scheduler=sched,
                                                                progress=self.progress))

    def _maybe_keep_best(self, metric: float) -> None:
        """Keep the ``keep_best`` checkpoints with the lowest validation action error of the last stage."""
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


def check_resumable(run: RunDir, config: TrainConfig) -> None:
    """Raise unless ``run`` has a checkpoint and a saved config equal to ``config`` (resumable fields aside)."""
    saved_file = run.path / RUN_CONFIG
    if not saved_file.is_file():
        raise LfmPolicyError(f"{run.path}: nothing to resume (no {RUN_CONFIG}; is this a training run's out_dir?)")
    if not run.has_checkpoint():
        raise LfmPolicyError(f"{run.path}: nothing to resume (no checkpoints/latest: the run stopped before its "
                             "first checkpoint); start it again with --overwrite")
    saved = TrainConfig.from_json(saved_file)
    diffs = config_differences(saved.to_dict(), config.to_dict())
    if diffs:
        listed = "; ".join(f"{k}: saved {a!r}, requested {b!r}" for k, a, b in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise LfmPolicyError(f"{saved_file}: --resume with a different config: {listed}{more}. Resume with the "
                             f"saved config (`lfm-policy train --resume {run.path}`), or start a new run")


def resume_config(out_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The saved config of the run in ``out_dir`` (``train_config.json``) with ``overrides`` applied."""
    path = Path(out_dir) / RUN_CONFIG
    if not path.is_file():
        raise LfmPolicyError(f"{out_dir}: nothing to resume (no {RUN_CONFIG}; is this a training run's out_dir?)")
    return TrainConfig.from_json(path).with_overrides(list(overrides)).replace(out_dir=str(out_dir))


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train a policy; returns the path of the final (``latest``) checkpoint (see :class:`Trainer`)."""
    trainer = Trainer(config, resume=resume, overwrite=overwrite, progress=progress)
    try:
        return trainer.run()
    except BaseException as e:
        trainer.run_dir.fail(e, trainer.progress["global_step"])
        raise
    finally:
        if hasattr(trainer, "_evaluator"):
            trainer._evaluator.close()
        if trainer.dist and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
