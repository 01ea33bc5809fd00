"""Policy = normalizer + observation encoder + action head, with a pure ``predict_action_chunk``.

Batch dict (DESIGN.md): ``{"obs": {key: (B, To, ...)}, "action": (B, H, Da), "action_is_pad": (B, H)}``.
Images arrive as uint8 (B, To, H, W, C) and become float (B, To, C, H, W) in [0, 1] on the device;
low-dim keys and actions are normalized to [−1, 1]. The observation embedding is computed once per
call and shared by every block/step of the head.

EMA covers the whole policy, as in Diffusion Policy: the head keeps EMA copies of its networks and the
policy keeps one of a trainable encoder (``ema_encoder``, same schedule as ``head.ema``). Inference uses
the EMA encoder; so do the conditions of the stages in which the encoder no longer trains (LFM blocks
2..N with ``encoder_training=first_stage``), so later blocks learn on the conditions they will see.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lfm_policy.config import Config, check
from lfm_policy.ema import ema_update
from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.chain import Solvers
from lfm_policy.heads import HeadConfig, build_head
from lfm_policy.nets.obs_encoder import ObsEncoder, ObsEncoderConfig
from lfm_policy.normalizer import LinearNormalizer

ENCODER_TRAINING = ("first_stage", "every_stage", "fm_first", "frozen")


@dataclass
class PolicyConfig(Config):
    """Shapes, encoder and head of a policy.

    Attributes:
        n_obs_steps: To, observation frames per decision.
        horizon: H, predicted actions per chunk.
        n_action_steps: Ta, actions executed per chunk (``chunk[To−1 : To−1+Ta]``).
        obs_keys: Observation keys the policy reads (empty = every key of the dataset).
        encoder: Observation encoder.
        head: Action head.
        encoder_training: ``first_stage``: the encoder trains with the first stage (LFM block 1) and is
            frozen afterwards, so the conditions that earlier blocks were trained on never change
            (default); ``every_stage``: it keeps training with every block (earlier, frozen blocks
            then see drifting conditions — with images this failed outright, 0.00 on the toy task, see
            docs/visuomotor.md); ``frozen``: it never trains — for an encoder loaded from another
            checkpoint (``TrainConfig.init_encoder_from``, e.g. an FM policy trained first);
            ``fm_first`` (``lfm`` heads): one extra first stage trains the encoder with a plain FM head
            (the same net, on the whole data→noise path, where the condition decides the outcome), and
            the blocks then train on its frozen EMA copy — measured the best for image policies
            (docs/visuomotor.md). The FM head is kept in the checkpoint but never samples. With other
            heads, or an encoder without weights (low-dim keys concatenated), it is ``first_stage``.
        encoder_ema: Keep an EMA copy of the encoder (``head.ema``'s schedule) for inference and for the
            conditions of stages where it no longer trains; False copies the trained weights instead.

    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    obs_keys: tuple[str, ...] = ()
    encoder: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    encoder_training: str = "first_stage"
    encoder_ema: bool = True

    def __post_init__(self) -> None:
        check(self.n_obs_steps >= 1, "n_obs_steps", f"must be ≥ 1, got {self.n_obs_steps}")
        check(self.horizon >= 1, "horizon", f"must be ≥ 1, got {self.horizon}")
        check(1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1, "n_action_steps",
              f"must be in [1, horizon − n_obs_steps + 1 = {self.horizon - self.n_obs_steps + 1}], "
              f"got {self.n_action_steps}")
        self.obs_keys = tuple(self.obs_keys)
        check(self.encoder_training in ENCODER_TRAINING, "encoder_training", f"choose from {ENCODER_TRAINING}")


@dataclass
class PolicySpec(Config):
    """What the policy consumes and produces (saved with checkpoints, checked on use).

    Attributes:
        obs_shapes: Per-frame shape of each observation key as the environment gives it:
            (H, W, C) uint8 for images, (D,) for low-dim keys.
        image_keys: Keys that are camera images.
        action_dim: Da.

    """

    obs_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    image_keys: tuple[str, ...] = ()
    action_dim: int = 0

    def __post_init__(self) -> None:
        self.obs_shapes = {k: tuple(int(s) for s in v) for k, v in self.obs_shapes.items()}
        self.image_keys = tuple(self.image_keys)
        check(bool(self.obs_shapes), "obs_shapes", "needs at least one observation key")
        check(self.action_dim >= 1, "action_dim", f"must be ≥ 1, got {self.action_dim}")
        for k in self.image_keys:
            check(k in self.obs_shapes and len(self.obs_shapes[k]) == 3, "image_keys",
                  f"{k!r} must be an observation key with an (H, W, C) shape")

    def encoder_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes as the encoder sees them: images (C, H, W)."""
        return {k: ((s[2], s[0], s[1]) if k in self.image_keys else s) for k, s in self.obs_shapes.items()}


def executable_slice(chunk: torch.Tensor, n_obs_steps: int, n_action_steps: int) -> torch.Tensor:
    """The actions to execute from a chunk: ``chunk[:, To−1 : To−1+Ta]`` (B, Ta, Da).

    The chunk's step To−1 lines up with the latest observation, as in Diffusion Policy.
    """
    start = n_obs_steps - 1
    return chunk[:, start : start + n_action_steps]


class Policy(nn.Module):
    """A visuomotor (or low-dim) policy.

    Args:
        config: Policy configuration.
        spec: Observation and action spec.
        normalizer: Fitted normalizer with the action key ``"action"`` and every low-dim key.

    """

    def __init__(self, config: PolicyConfig, spec: PolicySpec, normalizer: LinearNormalizer | None = None):
        super().__init__()
        self.config, self.spec = config, spec
        self.normalizer = normalizer if normalizer is not None else LinearNormalizer()
        self.encoder = ObsEncoder(config.encoder, spec.encoder_shapes(), config.n_obs_steps)
        self.head = build_head(config.head, (config.horizon, spec.action_dim), self.encoder.output_dim)
        # EMA copy of a trainable encoder (low-dim keys concatenated as they are have no weights).
        self.ema_encoder: ObsEncoder | None = None
        if any(True for _ in self.encoder.parameters()):
            self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.register_buffer("ema_encoder_step", torch.zeros((), dtype=torch.long))
        # encoder_training=fm_first: the FM head of the encoder's own stage (kept when distilling, so the
        # teacher's weights load; it only trains before the blocks).
        self.encoder_head = None
        if config.encoder_training == "fm_first" and config.head.kind == "lfm" and self.ema_encoder is not None:
            chain = config.head.chain.replace(gammas=None, sample_solvers=None, student_steps=None)  # 1 block
            fm = config.head.replace(kind="fm", distill=None, block_params=None, chain=chain)
            self.encoder_head = build_head(fm, (config.horizon, spec.action_dim), self.encoder.output_dim)

    def train(self, mode: bool = True) -> Policy:
        """Set training mode; the EMA encoder's batch-norm layers always use their running statistics.

        The EMA copy gives the conditions of stages where the encoder is frozen: they must not depend on
        the batch they sit in. Its running statistics are copied from the trained encoder at each EMA
        update (random crops still follow ``mode``).
        """
        super().train(mode)
        if self.ema_encoder is not None:
            for m in self.ema_encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------------------ observations
    def _prepare_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Check keys/shapes, move images to float CHW in [0, 1] and normalize low-dim keys."""
        missing = [k for k in self.spec.obs_shapes if k not in obs]
        unknown = sorted(k for k in obs if k not in self.spec.obs_shapes)
        if missing or unknown:
            raise LfmPolicyError(f"policy observation: missing key(s) {missing}, unknown key(s) {unknown}; "
                                 f"the checkpoint expects {sorted(self.spec.obs_shapes)}")
        out = {}
        to = self.config.n_obs_steps
        device = self.device
        for key, shape in self.spec.obs_shapes.items():
            x = torch.as_tensor(obs[key], device=device)
            if tuple(x.shape[1:]) != (to, *shape):
                raise LfmPolicyError(f"policy observation {key!r}: expected shape (B, {to}, "
                                     f"{', '.join(map(str, shape))}), got {tuple(x.shape)}")
            if key in self.spec.image_keys:
                x = x.permute(0, 1, 4, 2, 3)  # (B, To, H, W, C) -> (B, To, C, H, W)
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            else:
                x = self.normalizer.normalize_key(key, x.float())
            out[key] = x
        return out

    @property
    def device(self) -> torch.device:
        """Device of the policy's weights."""
        return next(self.head.parameters()).device

    def encode(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None, *,
               ema: bool = True) -> torch.Tensor:
        """Observation embedding (B, Dc), computed once per control step.

        Args:
            obs: ``{key: (B, To, ...)}``.
            generator: Random crops in training mode.
            ema: Use the EMA encoder (inference); False uses the trained weights.

        """
        encoder = self.ema_encoder if ema and self.ema_encoder is not None else self.encoder
        return encoder(self._prepare_obs(obs), generator=generator)

    # --------------------------------------------------------------------------------- training
    @property
    def n_stages(self) -> int:
        """Training stages: the head's, after the encoder's own FM stage with ``fm_first``."""
        return self.head.n_stages + self._offset

    @property
    def stage_shares(self) -> list[float] | None:
        """Each stage's share of ``total_steps`` (``head.block_steps`` for a training LFM head; None: equal).

        An ``fm_first`` encoder stage keeps its equal share 1/n_stages; the blocks split the rest.
        """
        shares = self.config.head.block_steps
        if shares is None or self.config.head.kind != "lfm" or self.config.head.distill is not None:
            return None
        rest = len(shares) / self.n_stages  # the blocks' part of the steps
        return [1 / self.n_stages] * self._offset + [f * rest for f in shares]

    @property
    def _offset(self) -> int:
        """1 while an ``fm_first`` encoder stage precedes the head's stages (not when distilling)."""
        return int(self.encoder_head is not None and self.config.head.distill is None)

    def _stage_owner(self, stage: int) -> tuple[nn.Module, int]:
        """(the head that trains in ``stage``, its own stage index)."""
        if self._offset and stage == 0:
            return self.encoder_head, 0
        return self.head, stage - self._offset

    def encoder_trains(self, stage: int) -> bool:
        """Whether the encoder is optimized in ``stage`` (``encoder_training``; never while distilling)."""
        if self.config.head.distill is not None or self.config.encoder_training == "frozen":
            return False
        return stage == 0 or self.config.encoder_training == "every_stage"

    def compute_loss(self, batch: Mapping, *, stage: int = 0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of training stage ``stage`` on a batch dict; returns (loss, info).

        The condition comes from the trained encoder where it trains in ``stage``, else from its EMA
        copy (frozen, the one used at inference).
        """
        action = torch.as_tensor(batch["action"])
        action = self.normalizer.normalize_key("action", action.to(self.device).float())
        sigma = self.config.head.action_noise
        if sigma > 0 and self.training:  # dequantization of the training targets
            action = action + sigma * torch.randn(action.shape, generator=generator, device=action.device)
        train_encoder = self.encoder_trains(stage)
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            cond = self.encode(batch["obs"], generator=generator, ema=not train_encoder)
        head, head_stage = self._stage_owner(stage)
        loss = head.loss(action, cond, stage=head_stage, generator=generator)
        return loss, {"loss": loss.item(), "stage": stage}

    def begin_stage(self, stage: int) -> None:
        """Before the first step of ``stage``: the head's hook; the encoder's EMA starts at stage 0.

        Only when the encoder trains in stage 0: a distillation (or a frozen, loaded encoder) keeps the
        EMA encoder its blocks were trained on.
        """
        head, head_stage = self._stage_owner(stage)
        head.begin_stage(head_stage)
        if stage == 0 and self.ema_encoder is not None and self.encoder_trains(0):
            self.ema_encoder.load_state_dict(self.encoder.state_dict())
            self.ema_encoder_step.zero_()

    def after_step(self, stage: int) -> None:
        """After each optimizer step: EMA of the head, and of the encoder where it trains."""
        head, head_stage = self._stage_owner(stage)
        head.after_step(head_stage)
        if self.ema_encoder is not None and self.encoder_trains(stage):
            self.ema_encoder_step += 1
            decay = self.config.head.ema.decay(int(self.ema_encoder_step)) if self.config.encoder_ema else 0.0
            ema_update(self.ema_encoder, self.encoder, decay)

    def end_stage(self, stage: int) -> None:
        """When ``stage`` is finished (an LFM block is frozen)."""
        head, head_stage = self._stage_owner(stage)
        head.end_stage(head_stage)

    def forward(self, batch: Mapping, stage: int = 0) -> torch.Tensor:
        """Training loss (what DDP wraps); see :meth:`compute_loss`."""
        return self.compute_loss(batch, stage=stage)[0]

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters optimized in ``stage``: the head's, plus the encoder's where it trains."""
        head, head_stage = self._stage_owner(stage)
        params = list(head.stage_parameters(head_stage))
        if self.encoder_trains(stage):
            params += list(self.encoder.parameters())
        return params

    # -------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_action_chunk(self, obs: Mapping[str, torch.Tensor], *, noise: torch.Tensor | None = None,
                             generator: torch.Generator | None = None, solver: Solvers | None = None
                             ) -> torch.Tensor:
        """Pure prediction: observation window → unnormalized action chunk (B, H, Da).

        Deterministic given ``noise`` (B, H, Da); no hidden state.
        """
        return self.sample_chunk(self.encode(obs), noise=noise, generator=generator, solver=solver)

    @torch.no_grad()
    def sample_chunk(self, cond: torch.Tensor, *, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, solver: Solvers | None = None) -> torch.Tensor:
        """Unnormalized action chunk (B, H, Da) from an embedding ``cond`` (B, Dc) of :meth:`encode`.

        With ``head.clip_sample`` the normalized chunk is clamped to [−1, 1] first.
        """
        chunk = self.head.sample(cond, noise=noise, generator=generator, solver=solver)
        if self.config.head.clip_sample:
            chunk = chunk.clamp(-1.0, 1.0)
        return self.normalizer.unnormalize_key("action", chunk)

    def executable_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, Ta, Da) actions to execute from a chunk."""
        return executable_slice(chunk, self.config.n_obs_steps, self.config.n_action_steps)

    def num_trained_params(self) -> int:
        """Parameters that training optimizes (the EMA copies of head networks and encoder excluded)."""
        return sum(p.numel() for name, p in self.named_parameters() if "ema" not in name)

    def nfe(self, solver: Solvers | None = None) -> int | None:
        """Network evaluations of the head per chunk (plus one encoder pass)."""
        return self.head.nfe(solver)

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, path, *, metadata: dict | None = None, write_extra=None):
        """Write a pickle-free checkpoint directory (see :func:`lfm_policy.checkpoint.save_policy`)."""
        from lfm_policy.checkpoint import save_policy

        return save_policy(self, path, metadata=metadata, write_extra=write_extra)

    @classmethod
    def load(cls, path, *, map_location: str = "cpu", expect_obs_shapes: dict | None = None) -> Policy:
        """Load a checkpoint; ``expect_obs_shapes`` rejects one trained on other observations."""
        from lfm_policy.checkpoint import load_policy

        return load_policy(path, map_location=map_location, expect_obs_shapes=expect_obs_shapes)


class ActionQueue:
    """Step-wise control on top of :meth:`Policy.predict_action_chunk`.

    Keeps the last To observations (the first is repeated after :meth:`reset`) and a queue of
    executable actions; a new chunk is predicted when the queue is empty.
    """

    def __init__(self, policy: Policy, *, solver: Solvers | None = None, generator: torch.Generator | None = None):
        self.policy, self.solver, self.generator = policy, solver, generator
        self.reset()

    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at episode start)."""
        self._obs: deque[dict[str, torch.Tensor]] = deque(maxlen=self.policy.config.n_obs_steps)
        self._actions: deque[torch.Tensor] = deque()

    def select_action(self, obs: Mapping[str, torch.Tensor | Sequence]) -> torch.Tensor:
        """One action (B, Da) for the current observation ``{key: (B, ...)}``."""
        frame = {k: torch.as_tensor(v) for k, v in obs.items()}
        if not self._obs:
            self._obs.extend([frame] * self.policy.config.n_obs_steps)
        else:
            self._obs.append(frame)
        if not self._actions:
            window = {k: torch.stack([f[k] for f in self._obs], dim=1) for k in frame}  # (B, To, ...)
            chunk = self.policy.predict_action_chunk(window, solver=self.solver, generator=self.generator)
            self._actions.extend(self.policy.executable_actions(chunk).unbind(dim=1))
        return self._actions.popleft()

