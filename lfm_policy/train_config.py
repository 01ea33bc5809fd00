"""Typed configs of ``lfm-policy train``: data, optimizer and the whole run (``TrainConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lfm_policy.config import Config, check
from lfm_policy.errors import LfmPolicyError
from lfm_policy.policy import PolicyConfig


@dataclass
class DataConfig(Config):
    """Where the demonstrations are and how they are split.

    Attributes:
        filter_key: Train (and validate) on the episodes of this filter key only: a name from the
            buffer's ``filters`` attr (robomimic's ``mask/<name>``; ``lfm-policy data info`` lists them,
            e.g. ``better`` or ``mode_left`` from ``lfm-policy collect --operators/--modes``) or a union
            ``better+okay``. ``""`` (default): every episode. The ``val_ratio`` split is made within them.

    """

    path: str = ""
    obs_keys: tuple[str, ...] = ()
    action_key: str = "action"
    val_ratio: float = 0.1
    max_train_episodes: int | None = None
    num_workers: int = 0
    filter_key: str = ""

    def __post_init__(self) -> None:
        self.obs_keys = tuple(self.obs_keys)
        check(isinstance(self.filter_key, str) and all(self.filter_key.split("+")) or self.filter_key == "",
              "filter_key", f"must be a filter key name or names joined by '+', got {self.filter_key!r}")
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
        sized_for: ``cpu`` or ``gpu``: the machine the config's network and batch are sized for
            (training a ``gpu`` config on a CPU logs a warning naming the CPU sibling).
        about: One line on what the config is for and its measured cost (shown in that warning).
        init_from: Checkpoint whose weights (and normalizer) the policy starts from, e.g. the teacher of
            a distillation (``lfm-policy distill``); the policy's own new modules (students) are the
            only weights it may lack.
        init_encoder_from: Checkpoint whose observation encoder (its EMA copy, the one inference uses)
            this policy starts from, the head trained from scratch — e.g. an FM policy's encoder for an
            LFM policy with ``policy.encoder_training=frozen``. Same observations and encoder config;
            low-dim keys are read through this run's normalizer, so train both on the same data.

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
    sized_for: str = "cpu"
    about: str = ""
    init_from: str = ""
    init_encoder_from: str = ""

    def __post_init__(self) -> None:
        check(self.sized_for in ("cpu", "gpu"), "sized_for", f"must be 'cpu' or 'gpu', got {self.sized_for!r}")
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
        check(not (self.init_from and self.init_encoder_from), "init_encoder_from",
              "give init_from (all weights) or init_encoder_from (the encoder), not both")
        check(self.policy.encoder_training != "frozen" or bool(self.init_from or self.init_encoder_from),
              "policy.encoder_training", "'frozen' needs init_encoder_from (or init_from): a frozen random "
              "encoder is never what you want")

    def steps_for(self, n_stages: int, shares: list[float] | None = None) -> list[int]:
        """Steps of each stage: ``stage_steps`` if set, else ``total_steps`` split by ``shares`` (default equally).

        Args:
            n_stages: Training stages of the policy.
            shares: Each stage's share of ``total_steps`` (summing to 1; ``Policy.stage_shares``);
                rounding puts the remainder on the last stage.

        """
        if self.stage_steps is not None:
            if len(self.stage_steps) != n_stages:
                raise LfmPolicyError(f"stage_steps has {len(self.stage_steps)} entries for {n_stages} stages")
            return list(self.stage_steps)
        if shares is None:
            return [max(1, self.total_steps // n_stages)] * n_stages
        if len(shares) != n_stages:
            raise LfmPolicyError(f"{len(shares)} step shares for {n_stages} stages")
        steps = [max(1, round(self.total_steps * f)) for f in shares[:-1]]
        return [*steps, max(1, self.total_steps - sum(steps))]
