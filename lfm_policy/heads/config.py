"""Configs of the action heads and of the velocity/denoiser networks they share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from lfm_policy.config import Config, check
from lfm_policy.ema import EMAConfig
from lfm_policy.flow.chain import ChainConfig
from lfm_policy.flow.distill import DistillConfig
from lfm_policy.flow.solvers import SolverConfig
from lfm_policy.nets.transformer import TransformerConfig
from lfm_policy.nets.unet1d import Unet1DConfig

HEAD_KINDS = ("lfm", "fm", "diffusion", "regression")
NET_FAMILIES = ("unet", "transformer", "mlp")


@dataclass
class MLPConfig(Config):
    """Hyperparameters of :class:`lfm_policy.nets.ResidualMLP`."""

    width: int = 512
    depth: int = 4
    time_dim: int = 64

    def __post_init__(self) -> None:
        check(self.width >= 1, "width", f"must be ≥ 1, got {self.width}")
        check(self.depth >= 1, "depth", f"must be ≥ 1, got {self.depth}")
        check(self.time_dim >= 2 and self.time_dim % 2 == 0, "time_dim", "must be even ≥ 2")


@dataclass
class NetConfig(Config):
    """Which network family predicts velocities/noise, and its sizes (only the chosen one is read)."""

    family: str = "unet"
    unet: Unet1DConfig = field(default_factory=Unet1DConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)

    def __post_init__(self) -> None:
        check(self.family in NET_FAMILIES, "family", f"choose from {NET_FAMILIES}, got {self.family!r}")

    def scaled(self, width_scale: float) -> NetConfig:
        """Same family with widths multiplied by ``width_scale`` (params scale ≈ width_scale²)."""
        if width_scale == 1.0:
            return self
        u, t, m = self.unet, self.transformer, self.mlp
        g = u.n_groups
        dims = tuple(max(g, int(round(d * width_scale / g)) * g) for d in u.down_dims)
        d_model = max(t.n_heads, int(round(t.d_model * width_scale / t.n_heads)) * t.n_heads)
        return dataclasses.replace(
            self,
            unet=dataclasses.replace(u, down_dims=dims),
            transformer=dataclasses.replace(t, d_model=d_model),
            mlp=dataclasses.replace(m, width=max(1, int(round(m.width * width_scale)))),
        )

    def build(self, event_shape: tuple[int, int], cond_dim: int) -> nn.Module:
        """Network ``net(x (B, H, Da), t (B,), cond (B, Dc)) -> (B, H, Da)``."""
        if self.family == "unet":
            return self.unet.build(event_shape, cond_dim)
        if self.family == "transformer":
            return self.transformer.build(event_shape, cond_dim)
        from lfm_policy.nets.mlp import ResidualMLP

        m = self.mlp
        return ResidualMLP(event_shape, cond_dim, width=m.width, depth=m.depth, time_dim=m.time_dim)


@dataclass
class DiffusionConfig(Config):
    """DDPM training with diffusers' schedulers, as Diffusion Policy.

    Attributes:
        num_train_timesteps: Diffusion steps at training (DDPM-100 samples with all of them).
        beta_schedule: diffusers beta schedule.
        prediction_type: ``epsilon`` or ``sample``.
        clip_sample: Clip predicted x0 to [−1, 1] (actions are normalized to that range).
        sampler: ``ddpm`` or ``ddim`` at inference.
        inference_steps: Steps of the sampler (DDIM-k); DDPM uses num_train_timesteps when None.

    """

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    sampler: str = "ddim"
    inference_steps: int | None = 10

    def __post_init__(self) -> None:
        check(self.num_train_timesteps >= 1, "num_train_timesteps", "must be ≥ 1")
        check(self.prediction_type in ("epsilon", "sample"), "prediction_type", "epsilon or sample")
        check(self.sampler in ("ddpm", "ddim"), "sampler", f"ddpm or ddim, got {self.sampler!r}")
        check(self.inference_steps is None or 1 <= self.inference_steps <= self.num_train_timesteps,
              "inference_steps", f"must be in [1, num_train_timesteps], got {self.inference_steps}")


@dataclass
class DiffusionSampler(Config):
    """A per-call sampler of the ``diffusion`` head (pass it as ``solver=``, like a flow's SolverConfig).

    Attributes:
        sampler: ``ddpm`` (all ``num_train_timesteps`` steps, stochastic) or ``ddim`` (deterministic).
        steps: DDIM steps (``ddim`` only; None means the head's ``inference_steps``).

    """

    sampler: str = "ddim"
    steps: int | None = None

    def __post_init__(self) -> None:
        check(self.sampler in ("ddpm", "ddim"), "sampler", f"ddpm or ddim, got {self.sampler!r}")
        check(self.steps is None or (isinstance(self.steps, int) and self.steps >= 1), "steps",
              f"must be an int ≥ 1 or None, got {self.steps!r}")
        check(self.sampler == "ddim" or self.steps is None, "steps",
              "DDPM samples with all num_train_timesteps steps; set steps only for ddim")


@dataclass
class HeadConfig(Config):
    """One interface for every action head; ``kind`` picks it.

    Attributes:
        kind: ``lfm`` (N blocks), ``fm`` (one global flow), ``diffusion`` or ``regression``.
        net: Network family and sizes. For ``lfm`` with ``equal_total_params`` each block gets
            widths scaled by 1/sqrt(N), so N blocks hold about the parameters of one ``fm`` network.
        chain: LFM chain settings (``fm`` uses them with n_blocks forced to 1).
        equal_total_params: See ``net``.
        diffusion: Settings of the ``diffusion`` head.
        ema: EMA of the head's network(s) (per block for flow heads); sampling uses the EMA weights.
            Set it here, not under ``chain.ema`` (which must stay at its default).
        clip_sample: Clamp every sampled chunk to [−1, 1] in normalized units — the range of the
            training actions under the trainer's min-max normalization — before unnormalizing (as
            Diffusion Policy's ``clip_sample``, for every head). Guards the robot against the rare
            out-of-range chunk of an imperfect sampler.
        distill: For ``lfm``/``fm``: the blocks have distilled students (``lfm-policy distill``); the
            head's stages then train the students, one per distilled block, from a trained teacher.
        block_params: ``lfm`` with ``equal_total_params``: each block's share of the parameter budget
            (one FM network's), e.g. ``[0.1, 0.1, 0.1, 0.7]`` gives the free block most of it; default
            equal shares 1/N.
        block_steps: ``lfm``: each block's share of the training steps (``total_steps``), in block
            order (the free block last), e.g. ``[0.25, 0.75]`` trains the free block 3 × as long as the
            first; default equal shares. Other heads (one stage) and distillation ignore it.
        action_noise: Std of Gaussian noise added to the normalized training actions (dequantization:
            spreads the point masses of gripper commands and clipped actions); 0 disables it.

    """

    kind: str = "lfm"
    net: NetConfig = field(default_factory=NetConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    equal_total_params: bool = True
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    clip_sample: bool = True
    distill: DistillConfig | None = None
    block_params: tuple[float, ...] | None = None
    block_steps: tuple[float, ...] | None = None
    action_noise: float = 0.0

    def _check_block_shares(self, name: str, *, exact: bool) -> None:
        """Validate the per-block shares ``name`` (made a float tuple): > 0, one per LFM block, sum 1 or ≤ 1.

        ``exact``: the shares must sum to 1 (else to at most 1).
        """
        values = getattr(self, name)
        if values is None:
            return
        values = tuple(float(f) for f in values)
        setattr(self, name, values)
        total_ok = abs(sum(values) - 1) < 1e-6 if exact else sum(values) <= 1 + 1e-6
        check(all(f > 0 for f in values) and total_ok, name,
              f"shares must be > 0 and sum to {'1' if exact else 'at most 1'}, got {values}")
        check(self.kind != "lfm" or len(values) == self.chain.n_blocks, name,
              f"needs one share per block ({self.chain.n_blocks}), got {len(values)}")

    def __post_init__(self) -> None:
        self._check_block_shares("block_params", exact=False)
        self._check_block_shares("block_steps", exact=True)
        check(self.action_noise >= 0, "action_noise", f"must be ≥ 0, got {self.action_noise}")
        check(self.kind in HEAD_KINDS, "kind", f"choose from {HEAD_KINDS}, got {self.kind!r}")
        check(self.chain.ema == EMAConfig(), "chain.ema", "set the EMA under head.ema (it serves every head)")
        check(self.distill is None or self.kind in ("lfm", "fm"), "distill", "only flow heads (lfm, fm) distill")
        check(self.kind != "fm" or self.chain.n_blocks == 1 or self.chain.student_steps is None, "chain",
              "an fm head with students needs chain.n_blocks = 1")
        if self.distill is not None:
            _ = self.chain_config  # validates the distilled blocks and per-block solvers against the chain

    @property
    def chain_config(self) -> ChainConfig:
        """The chain used by flow heads (N = 1 for ``fm``; students where ``distill`` says)."""
        n_blocks = 1 if self.kind == "fm" else self.chain.n_blocks
        gammas = None if self.kind == "fm" else self.chain.gammas
        students = self.chain.student_steps
        if self.distill is not None:
            blocks = set(self.distill.block_list(n_blocks))
            students = tuple(self.distill.steps if n in blocks else 0 for n in range(n_blocks))
        return dataclasses.replace(self.chain, n_blocks=n_blocks, gammas=gammas, ema=self.ema,
                                   student_steps=students)

    def block_net_configs(self, event_shape: tuple[int, int], cond_dim: int) -> list[NetConfig]:
        """Network config of each flow block.

        With ``equal_total_params`` and N > 1 blocks, block n's widths are scaled by the largest factor
        for which it holds no more than its share (``block_params``, default 1/N) of the parameters of
        one network of ``net`` (found by bisection, with the networks built and dropped on the CPU).
        """
        n = self.chain_config.n_blocks if self.kind in ("lfm", "fm") else 1
        if n == 1 or not self.equal_total_params:
            return [self.net] * n
        budget = count_params(self.net, event_shape, cond_dim)
        shares = self.block_params or (1.0 / n,) * n
        scaled: dict[float, NetConfig] = {}
        for share in shares:
            if share not in scaled:
                lo, hi = 0.0, 1.0
                for _ in range(10):
                    mid = (lo + hi) / 2
                    if count_params(self.net.scaled(mid), event_shape, cond_dim) <= share * budget:
                        lo = mid
                    else:
                        hi = mid
                scaled[share] = self.net.scaled(max(lo, 1e-3))
        return [scaled[share] for share in shares]

    def default_solver(self) -> SolverConfig:
        """Sampling solver of flow heads."""
        return self.chain_config.sample_solver


def count_params(net: NetConfig, event_shape: tuple[int, int], cond_dim: int) -> int:
    """Parameters of ``net.build(event_shape, cond_dim)``.

    Built on the CPU and dropped (0.35 s for Diffusion Policy's 69M-parameter UNet). Not on the meta
    device: that path imports torch._dynamo and triton, which crashed next to numba's LLVM in tests.
    """
    return sum(p.numel() for p in net.build(event_shape, cond_dim).parameters())
