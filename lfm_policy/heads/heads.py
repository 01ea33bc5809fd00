"""Action heads behind one interface: ``lfm``, ``fm`` (flows), ``diffusion`` (DDPM/DDIM), ``regression``.

Every head maps a condition (B, Dc) — the observation embedding, computed once per control step — to an
action chunk (B, H, Da) in normalized units. They share the network families of ``NetConfig`` so that
comparisons are fair. Training may have several stages (one per LFM block); the trainer calls
``begin_stage``, ``loss(stage=...)``, ``after_step`` (EMA) and ``end_stage``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lfm_policy.ema import ema_update
from lfm_policy.errors import LfmPolicyError
from lfm_policy.flow.block import weighted_mean
from lfm_policy.flow.chain import LocalFlowChain, Solvers
from lfm_policy.flow.distill import PairReplay, distill_loss
from lfm_policy.flow.solvers import STUDENT, SolverConfig
from lfm_policy.heads.config import DiffusionSampler, HeadConfig


class ActionHead(nn.Module):
    """Base class. Subclasses set ``n_stages`` and implement ``loss``, ``sample``, ``nfe``."""

    n_stages: int = 1

    def __init__(self, config: HeadConfig, event_shape: tuple[int, int], cond_dim: int):
        super().__init__()
        self.config = config
        self.event_shape = (int(event_shape[0]), int(event_shape[1]))
        self.cond_dim = int(cond_dim)

    def loss(self, action: torch.Tensor, cond: torch.Tensor, *, stage: int = 0,
             weight: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of ``stage`` for normalized actions (B, H, Da) and conditions (B, Dc)."""
        raise NotImplementedError

    def sample(self, cond: torch.Tensor, *, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, solver: Solvers | None = None) -> torch.Tensor:
        """Action chunk (B, H, Da); deterministic given ``noise``."""
        raise NotImplementedError

    def nfe(self, solver: Solvers | None = None) -> int | None:
        """Network evaluations per chunk."""
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """Whether every stage is trained, so that :meth:`sample` can run."""
        return True

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters trained in ``stage``."""
        return [p for n, p in self.named_parameters() if not n.startswith("ema_")]

    def begin_stage(self, stage: int) -> None:
        """Called before the first step of ``stage``."""

    def after_step(self, stage: int) -> None:
        """Called after each optimizer step (EMA update)."""

    def end_stage(self, stage: int) -> None:
        """Called when ``stage`` is finished."""

    def _noise(self, cond: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None):
        if noise is not None:
            if tuple(noise.shape) != (cond.shape[0], *self.event_shape):
                raise ValueError(f"noise must have shape {(cond.shape[0], *self.event_shape)}, "
                                 f"got {tuple(noise.shape)}")
            return noise
        return torch.randn((cond.shape[0], *self.event_shape), generator=generator, device=cond.device)


class FlowHead(ActionHead):
    """``lfm`` (N local blocks + free block) or ``fm`` (N = 1) on a :class:`LocalFlowChain`."""

    def __init__(self, config: HeadConfig, event_shape: tuple[int, int], cond_dim: int):
        super().__init__(config, event_shape, cond_dim)
        net_cfgs = config.block_net_configs(self.event_shape, cond_dim)
        self.chain = LocalFlowChain(lambda n: net_cfgs[n].build(self.event_shape, cond_dim), self.event_shape,
                                    config.chain_config)
        self.distill = config.distill
        # Distillation (lfm_policy.flow.distill): stage s trains the student of block order[s].
        self.order = self.distill.block_list(self.chain.n_blocks) if self.distill is not None else []
        self.n_stages = len(self.order) if self.distill is not None else self.chain.n_blocks
        self._replay: tuple[int, PairReplay | None] | None = None  # (stage, replay of generated pairs)

    def loss(self, action, cond, *, stage=0, weight=None, generator=None):
        """Flow-matching loss of block ``stage`` (pushforward inside), or the student's distillation loss."""
        if self.distill is not None:
            if self._replay is None or self._replay[0] != stage:
                self._replay = (stage, PairReplay(self.distill.replay_size) if self.distill.reuse > 1 else None)
            replay = self._replay[1] if self.training else None  # validation pairs stay out of the replay
            return distill_loss(self.chain, self.order[stage], action, cond, self.distill, replay=replay,
                                generator=generator)
        return self.chain.loss(stage, action, cond, weight=weight, generator=generator)

    def sample(self, cond, *, noise=None, generator=None, solver=None):
        """Run the blocks in reverse from noise; ``solver`` may differ per block (anytime NFE)."""
        if not self.ready:
            raise LfmPolicyError(f"lfm head: only {int(self.chain.n_trained)} of {self.chain.n_blocks} blocks are "
                                 "trained; the chain samples once its last block is training")
        return self.chain.sample(cond, noise=self._noise(cond, noise, generator), solver=self.block_solvers(solver),
                                 require_trained=False)

    def block_solvers(self, solver: Solvers | None = None) -> list[SolverConfig]:
        """The solver of each block that :meth:`sample` uses for ``solver`` (None: the defaults)."""
        if solver is None and self.distill is not None:
            return self._solvers_while_distilling()
        return self.chain.solvers(solver)

    def _solvers_while_distilling(self) -> list[SolverConfig]:
        """The default solvers, with the teacher's ODE for blocks whose student has not started yet."""
        chain = self.chain
        ode = chain.config.sample_solver if chain.config.sample_solver.method != STUDENT else SolverConfig()
        return [ode if s.method == STUDENT and not (bool(chain.student_done[n]) or int(chain.student_ema_steps[n]))
                else s for n, s in enumerate(chain.solvers())]

    def nfe(self, solver=None):
        """N × steps × evaluations per step."""
        return self.chain.nfe(solver)

    @property
    def ready(self):
        """Every block but the last is finished and the last has trained (its EMA copy is used)."""
        n_trained, last = int(self.chain.n_trained), self.chain.n_blocks - 1
        return n_trained > last or (n_trained == last and int(self.chain.ema_steps[last]) > 0)

    def stage_parameters(self, stage):
        """Only block ``stage`` trains in stage ``stage`` (distilling: only that stage's student)."""
        if self.distill is not None:
            return list(self.chain.students[str(self.order[stage])].parameters())
        return list(self.chain.blocks[stage].parameters())

    def begin_stage(self, stage):
        """Warm start from the previous block (distilling: the student starts as its teacher block)."""
        if self.distill is not None:
            return self.chain.begin_student(self.order[stage])
        self.chain.begin_block(stage)

    def after_step(self, stage):
        """EMA of the block (or student) being trained."""
        if self.distill is not None:
            return self.chain.update_student_ema(self.order[stage])
        self.chain.update_ema(stage)

    def end_stage(self, stage):
        """Freeze the block: later blocks push through its EMA copy (distilling: the student is done)."""
        if self.distill is not None:
            return self.chain.finish_student(self.order[stage])
        self.chain.finish_block(stage)


class _SingleNetHead(ActionHead):
    """A head with one network and its EMA copy."""

    def __init__(self, config: HeadConfig, event_shape: tuple[int, int], cond_dim: int):
        super().__init__(config, event_shape, cond_dim)
        self.net = config.net.build(self.event_shape, cond_dim)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))

    def begin_stage(self, stage):
        """Start the EMA copy from the current weights."""
        self.ema_net.load_state_dict(self.net.state_dict())
        self.ema_step.zero_()

    def after_step(self, stage):
        """EMA update."""
        self.ema_step += 1
        ema_update(self.ema_net, self.net, self.config.ema.decay(int(self.ema_step)))


class DiffusionHead(_SingleNetHead):
    """DDPM training, DDPM or DDIM sampling with diffusers' schedulers (as Diffusion Policy).

    The network's time input is the diffusion step divided by ``num_train_timesteps`` (our networks
    take t ∈ [0, 1] and stretch it themselves).
    """

    def __init__(self, config: HeadConfig, event_shape: tuple[int, int], cond_dim: int):
        super().__init__(config, event_shape, cond_dim)
        from diffusers import DDIMScheduler, DDPMScheduler

        d = config.diffusion
        kwargs = dict(num_train_timesteps=d.num_train_timesteps, beta_schedule=d.beta_schedule,
                      clip_sample=d.clip_sample, prediction_type=d.prediction_type)
        self.train_scheduler = DDPMScheduler(**kwargs)
        self.schedulers = {"ddpm": DDPMScheduler(**kwargs),
                           "ddim": DDIMScheduler(**kwargs, set_alpha_to_one=True, steps_offset=0)}

    def _sampler(self, solver) -> tuple[str, int]:
        """(sampler, steps) of a call: ``solver`` (a :class:`DiffusionSampler`) or the config's."""
        d = self.config.diffusion
        if solver is None:
            solver = DiffusionSampler(sampler=d.sampler, steps=d.inference_steps if d.sampler == "ddim" else None)
        if not isinstance(solver, DiffusionSampler):
            raise TypeError(f"the diffusion head samples with a DiffusionSampler (sampler='ddpm'|'ddim', steps), "
                            f"got {type(solver).__name__}")
        if solver.sampler == "ddpm":
            return "ddpm", d.num_train_timesteps
        steps = solver.steps or d.inference_steps or d.num_train_timesteps
        if steps > d.num_train_timesteps:
            raise ValueError(f"DDIM steps must be ≤ num_train_timesteps ({d.num_train_timesteps}), got {steps}")
        return "ddim", steps

    def loss(self, action, cond, *, stage=0, weight=None, generator=None):
        """Noise-prediction (or sample-prediction) MSE at a random diffusion step."""
        b = action.shape[0]
        t = torch.randint(0, self.config.diffusion.num_train_timesteps, (b,), generator=generator,
                          device=action.device)
        eps = torch.randn(action.shape, generator=generator, device=action.device)
        noisy = self.train_scheduler.add_noise(action, eps, t)
        pred = self.net(noisy, t.float() / self.config.diffusion.num_train_timesteps, cond)
        target = eps if self.config.diffusion.prediction_type == "epsilon" else action
        return weighted_mean((pred - target) ** 2, weight)

    @torch.no_grad()
    def sample(self, cond, *, noise=None, generator=None, solver=None):
        """Run the sampler from noise (DDPM draws fresh noise each step from ``generator``).

        ``solver``: a :class:`DiffusionSampler` (e.g. ``DiffusionSampler("ddpm")`` for DDPM-100 from a
        head configured for DDIM-10); None uses ``config.diffusion``.
        """
        x = self._noise(cond, noise, generator)
        name, steps = self._sampler(solver)
        scheduler = self.schedulers[name]
        scheduler.set_timesteps(steps, device=cond.device)
        t_scale = self.config.diffusion.num_train_timesteps
        for t in scheduler.timesteps:
            out = self.ema_net(x, t.float().expand(x.shape[0]) / t_scale, cond)
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        return x

    def nfe(self, solver=None):
        """Sampler steps."""
        return self._sampler(solver)[1]


class RegressionHead(_SingleNetHead):
    """One-shot MSE prediction of the chunk with the same trunk (input zeros, t = 0)."""

    def _predict(self, net: nn.Module, cond: torch.Tensor) -> torch.Tensor:
        b = cond.shape[0]
        x = cond.new_zeros((b, *self.event_shape))
        return net(x, cond.new_zeros(b), cond)

    def loss(self, action, cond, *, stage=0, weight=None, generator=None):
        """MSE between the prediction and the demonstrated chunk."""
        return weighted_mean((self._predict(self.net, cond) - action) ** 2, weight)

    @torch.no_grad()
    def sample(self, cond, *, noise=None, generator=None, solver=None):
        """The prediction (noise is ignored: regression is deterministic)."""
        return self._predict(self.ema_net, cond)

    def nfe(self, solver=None):
        """One evaluation."""
        return 1


def build_head(config: HeadConfig, event_shape: tuple[int, int], cond_dim: int) -> ActionHead:
    """Head for ``config.kind``."""
    if config.kind in ("lfm", "fm"):
        return FlowHead(config, event_shape, cond_dim)
    if config.kind == "diffusion":
        return DiffusionHead(config, event_shape, cond_dim)
    return RegressionHead(config, event_shape, cond_dim)
