"""LocalFlowChain: N flow blocks trained one after another, sampled in reverse.

Training pairs of block n (0-based) come from pushing each data sample, **with its own condition**,
through the frozen EMA copies of blocks 0..n−1 (t: 0→1), then

* local block (n < N−1): ``x_noise_side = ou_step(x_data_side, γ_n, z)`` — dependent coupling;
* free block (n = N−1): ``x_noise_side = z`` — independent N(0, I) noise.

The pushforward is computed **on the fly**, per batch, inside :meth:`LocalFlowChain.training_pair`,
which takes the raw data and its condition together. We chose this over a cached pushed pool because
(1) the pairing of a pushed sample with its condition cannot be broken by a separate shuffle — there is
no separate array to shuffle; (2) it stays correct when the condition changes between epochs (random
crops, an encoder still training); (3) memory does not grow with the dataset. The price is
n × (push NFE) extra no-grad evaluations per batch for block n; blocks are small, and the push solver
is configurable. There is deliberately no API that accepts pre-pushed samples apart from their
conditions.

Generation: z ~ N(0, I), then blocks N−1..0 each integrated t: 1→0 with their EMA weights.
N = 1 is plain conditional flow matching (the FM baseline).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lfm_policy.config import Config, check
from lfm_policy.ema import EMAConfig, ema_update
from lfm_policy.flow.block import TIME_SAMPLINGS, FlowBlock
from lfm_policy.flow.interpolants import INTERPOLANTS
from lfm_policy.flow.schedule import OUSchedule, ou_step
from lfm_policy.flow.solvers import STUDENT, SolverConfig


@dataclass
class ChainConfig(Config):
    """Configuration of a :class:`LocalFlowChain`.

    Attributes:
        n_blocks: N ≥ 1 (1 = plain flow matching).
        c: First OU step size of the exponential schedule γ_n = c·ρ^(n−1).
        rho: Growth factor of the schedule.
        gammas: Explicit local step sizes (length N−1); overrides c and rho when given.
        interpolant: ``linear`` or ``trig``.
        time_sampling: ``uniform`` or ``logit_normal`` training times.
        warm_start: Initialise block n from block n−1's EMA weights.
        push_solver: Solver used to push data through earlier blocks during training.
        sample_solver: Default solver for generation (overridable per call).
        sample_solvers: Default solver per block (overrides ``sample_solver``), e.g. ``student`` for the
            distilled blocks and a 2-step ODE for the free block.
        student_steps: Steps of each block's distilled student (0: the block has none), see
            :mod:`lfm_policy.flow.distill`. Set by distillation; it decides which modules exist.
        source: Data side of block n's training pairs. ``push`` (the paper's): the data pushed through
            the trained blocks 0..n−1. ``ou_marginal``: the data diffused by the exact OU process over
            the earlier blocks' total step Γ_n = γ_0 + … + γ_{n−1} (simulation-free; every block learns the
            map between two exact OU marginals of the data, so blocks do not depend on each other's
            training error and a point mass in the data is already spread for n > 0).
        ema: EMA schedule, one EMA copy per block (used for pushing and sampling).

    """

    n_blocks: int = 4
    c: float = 0.1
    rho: float = 1.5
    gammas: tuple[float, ...] | None = None
    interpolant: str = "linear"
    time_sampling: str = "uniform"
    warm_start: bool = True
    push_solver: SolverConfig = field(default_factory=lambda: SolverConfig(method="midpoint", steps=4))
    sample_solver: SolverConfig = field(default_factory=lambda: SolverConfig(method="midpoint", steps=4))
    sample_solvers: tuple[SolverConfig, ...] | None = None
    student_steps: tuple[int, ...] | None = None
    source: str = "push"
    ema: EMAConfig = field(default_factory=EMAConfig)

    def __post_init__(self) -> None:
        check(isinstance(self.n_blocks, int) and self.n_blocks >= 1, "n_blocks", f"must be ≥ 1, got {self.n_blocks}")
        check(self.c > 0, "c", f"must be > 0, got {self.c}")
        check(self.rho > 0, "rho", f"must be > 0, got {self.rho}")
        if self.gammas is not None:
            self.gammas = tuple(float(g) for g in self.gammas)
            check(
                len(self.gammas) == self.n_blocks - 1,
                "gammas",
                f"needs n_blocks − 1 = {self.n_blocks - 1} local step sizes, got {len(self.gammas)}",
            )
            check(all(g > 0 for g in self.gammas), "gammas", "every step size must be > 0")
        check(self.interpolant in INTERPOLANTS, "interpolant", f"choose from {sorted(INTERPOLANTS)}")
        check(self.time_sampling in TIME_SAMPLINGS, "time_sampling", f"choose from {TIME_SAMPLINGS}")
        check(self.source in SOURCES, "source", f"choose from {SOURCES}, got {self.source!r}")
        if self.student_steps is not None:
            self.student_steps = tuple(int(k) for k in self.student_steps)
            check(len(self.student_steps) == self.n_blocks and all(k >= 0 for k in self.student_steps),
                  "student_steps", f"needs one count ≥ 0 per block ({self.n_blocks}), got {self.student_steps}")
        if self.sample_solvers is not None:
            self.sample_solvers = tuple(SolverConfig.from_dict(v) if isinstance(v, dict) else v
                                        for v in self.sample_solvers)
            check(len(self.sample_solvers) == self.n_blocks, "sample_solvers",
                  f"needs one solver per block ({self.n_blocks}), got {len(self.sample_solvers)}")
        for n, sv in enumerate(self.sample_solvers or ()):
            check(sv.method != STUDENT or self.student(n) > 0, "sample_solvers",
                  f"block {n} has no distilled student to sample with")
        check(self.sample_solver.method != STUDENT or all(self.student(n) for n in range(self.n_blocks)),
              "sample_solver", "'student' needs a student for every block (or set sample_solvers per block)")

    def student(self, n: int) -> int:
        """Steps of block n's student (0: none)."""
        return self.student_steps[n] if self.student_steps is not None else 0

    @property
    def schedule(self) -> OUSchedule:
        """The OU schedule (explicit gammas, else exponential)."""
        if self.gammas is not None:
            return OUSchedule.from_list(self.gammas)
        return OUSchedule.exponential(self.n_blocks, self.c, self.rho)


Solvers = SolverConfig | Sequence[SolverConfig]
SOURCES = ("push", "ou_marginal")


class LocalFlowChain(nn.Module):
    """N conditional flow blocks with per-block EMA copies.

    Args:
        make_net: ``make_net(n)`` builds the velocity network of block n (0-based).
        event_shape: Shape of one sample, e.g. (H, Da) for an action chunk.
        config: Chain configuration.

    """

    def __init__(
        self,
        make_net: Callable[[int], nn.Module],
        event_shape: Sequence[int],
        config: ChainConfig | None = None,
    ):
        super().__init__()
        self.config = config or ChainConfig()
        self.schedule = self.config.schedule
        self.event_shape = tuple(int(s) for s in event_shape)
        n = self.config.n_blocks
        self.blocks = nn.ModuleList(
            FlowBlock(make_net(i), self.config.interpolant, self.config.time_sampling) for i in range(n)
        )
        self.ema_blocks = nn.ModuleList(copy.deepcopy(b) for b in self.blocks)
        self.ema_blocks.requires_grad_(False)
        # Progress lives in buffers so that it is saved with the weights (resume mid-chain).
        self.register_buffer("n_trained", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_steps", torch.zeros(n, dtype=torch.long))
        # Distilled students (lfm_policy.flow.distill): a copy of the block whose Euler-k reverse map is
        # trained to match the block's accurate reverse transport; EMA copies sample.
        distilled = [i for i in range(n) if self.config.student(i)]
        self.students = nn.ModuleDict({str(i): copy.deepcopy(self.blocks[i]) for i in distilled})
        self.ema_students = nn.ModuleDict({str(i): copy.deepcopy(self.blocks[i]) for i in distilled})
        self.ema_students.requires_grad_(False)
        if distilled:
            self.register_buffer("student_ema_steps", torch.zeros(n, dtype=torch.long))
            self.register_buffer("student_done", torch.zeros(n, dtype=torch.bool))

    @property
    def n_blocks(self) -> int:
        """N."""
        return len(self.blocks)

    # ----------------------------------------------------------------------------------- training
    def begin_block(self, n: int) -> None:
        """Prepare block n for training: earlier blocks must be finished; optional warm start."""
        self._check_index(n)
        if int(self.n_trained) < n:
            raise RuntimeError(f"cannot train block {n}: only {int(self.n_trained)} earlier block(s) are finished")
        prev = self.ema_blocks[n - 1].state_dict() if n > 0 else {}
        same_shape = prev and all(v.shape == prev[k].shape for k, v in self.blocks[n].state_dict().items() if k in prev)
        if self.config.warm_start and same_shape:  # blocks of other widths (block_params) start fresh
            self.blocks[n].load_state_dict(prev)
        self.ema_blocks[n].load_state_dict(self.blocks[n].state_dict())
        self.ema_steps[n] = 0

    def finish_block(self, n: int) -> None:
        """Mark blocks 0..n as trained (their EMA copies are now used for pushing and sampling)."""
        self._check_index(n)
        self.n_trained.fill_(max(int(self.n_trained), n + 1))

    def update_ema(self, n: int) -> None:
        """One EMA update of block n after an optimizer step."""
        self.ema_steps[n] += 1
        ema_update(self.ema_blocks[n], self.blocks[n], self.config.ema.decay(int(self.ema_steps[n])))

    def begin_student(self, n: int) -> None:
        """Start block n's student (and its EMA copy) from the teacher block's EMA weights."""
        self._check_student(n)
        self.students[str(n)].load_state_dict(self.ema_blocks[n].state_dict())
        self.ema_students[str(n)].load_state_dict(self.ema_blocks[n].state_dict())
        self.student_ema_steps[n] = 0

    def update_student_ema(self, n: int) -> None:
        """One EMA update of block n's student after an optimizer step."""
        self.student_ema_steps[n] += 1
        ema_update(self.ema_students[str(n)], self.students[str(n)],
                   self.config.ema.decay(int(self.student_ema_steps[n])))

    def finish_student(self, n: int) -> None:
        """Mark block n's student as distilled (later students see its output on the student path)."""
        self._check_student(n)
        self.student_done[n] = True

    def _check_student(self, n: int) -> None:
        self._check_index(n)
        if not self.config.student(n):
            raise IndexError(f"block {n} has no student (student_steps={self.config.student_steps})")

    @torch.no_grad()
    def push(
        self, x: torch.Tensor, cond: torch.Tensor | None, up_to: int, solver: SolverConfig | None = None
    ) -> torch.Tensor:
        """Push data through the EMA copies of blocks 0..up_to−1 (t: 0→1 in each), row i with cond[i].

        Args:
            x: (B, *event_shape) data.
            cond: (B, Dc) condition of each row, or None.
            up_to: Number of blocks to push through (0 returns x).
            solver: Push solver (default: ``config.push_solver``).

        """
        self._check_batch(x, cond)
        solver = solver or self.config.push_solver
        for i in range(up_to):
            x = self.ema_blocks[i].forward_transport(x, cond, solver)
        return x

    def training_pair(
        self,
        n: int,
        x_data: torch.Tensor,
        cond: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Endpoints (x_data_side, x_noise_side) of block n for a batch of data and its conditions.

        Args:
            n: Block index (0-based).
            x_data: (B, *event_shape) data samples.
            cond: (B, Dc) the condition of each sample (kept row-aligned through the pushforward).
            generator: RNG for the OU / free-block noise.

        Returns:
            Two (B, *event_shape) tensors.

        """
        self._check_index(n)
        if self.config.source == "ou_marginal":
            elapsed = sum(self.schedule.gamma(m) for m in range(n))  # Γ_n
            z0 = torch.randn(x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
            x_data_side = ou_step(x_data, elapsed, z0) if n > 0 else x_data
        else:
            x_data_side = self.push(x_data, cond, n)
        z = torch.randn(x_data_side.shape, generator=generator, device=x_data.device, dtype=x_data.dtype)
        if self.schedule.is_free(n):
            return x_data_side, z
        return x_data_side, ou_step(x_data_side, self.schedule.gamma(n), z)

    def loss(
        self,
        n: int,
        x_data: torch.Tensor,
        cond: torch.Tensor | None,
        *,
        weight: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss of block n on a batch of raw data (pushforward done here)."""
        x_data_side, x_noise_side = self.training_pair(n, x_data, cond, generator=generator)
        return self.blocks[n].loss(x_data_side, x_noise_side, cond, weight=weight, generator=generator)

    # --------------------------------------------------------------------------------- generation
    def solvers(self, solver: Solvers | None = None) -> list[SolverConfig]:
        """One solver per block (a single config is used for every block; default: the config's)."""
        solver = solver or self.config.sample_solvers or self.config.sample_solver
        if isinstance(solver, SolverConfig):
            solver = [solver] * self.n_blocks
        solver = list(solver)
        if len(solver) != self.n_blocks:
            raise ValueError(f"got {len(solver)} solvers for a chain of {self.n_blocks} blocks")
        for n, s in enumerate(solver):
            if s.method == STUDENT and not self.config.student(n):
                raise ValueError(f"block {n} has no distilled student (distilled blocks: "
                                 f"{[i for i in range(self.n_blocks) if self.config.student(i)]})")
        return solver

    def nfe(self, solver: Solvers | None = None) -> int | None:
        """Network evaluations for one sample with this solver setting (None if adaptive)."""
        counts = [self.config.student(n) if s.method == STUDENT else s.nfe for n, s in enumerate(self.solvers(solver))]
        return None if any(c is None for c in counts) else sum(counts)

    def reverse_block(self, n: int, x: torch.Tensor, cond: torch.Tensor | None, solver: SolverConfig, *,
                      use_ema: bool = True) -> torch.Tensor:
        """Block n's reverse map (t: 1→0) with ``solver``; ``student`` runs its distilled student."""
        if solver.method == STUDENT:
            student = (self.ema_students if use_ema else self.students)[str(n)]
            return student.reverse_transport(x, cond, SolverConfig(method="euler", steps=self.config.student(n)))
        return (self.ema_blocks if use_ema else self.blocks)[n].reverse_transport(x, cond, solver)

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor | None,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        solver: Solvers | None = None,
        batch_size: int | None = None,
        use_ema: bool = True,
        require_trained: bool = True,
    ) -> torch.Tensor:
        """Generate samples: z ~ N(0, I), then blocks N−1..0 each integrated t: 1→0.

        Args:
            cond: (B, Dc) conditions, or None (then give ``batch_size`` or ``noise``).
            noise: (B, *event_shape) starting noise; drawn when None. Given noise → deterministic.
            generator: RNG for the noise.
            solver: One solver config, or one per block.
            batch_size: B when neither cond nor noise tells it.
            use_ema: Use the EMA weights (default) or the raw trained weights.
            require_trained: Raise if some blocks are not trained yet.

        Returns:
            (B, *event_shape) samples.

        """
        if require_trained and int(self.n_trained) < self.n_blocks:
            raise RuntimeError(f"chain has {int(self.n_trained)} of {self.n_blocks} blocks trained")
        if noise is None:
            b = cond.shape[0] if cond is not None else batch_size
            if b is None:
                raise ValueError("sample: give cond, noise or batch_size")
            device = cond.device if cond is not None else self.n_trained.device
            noise = torch.randn((b, *self.event_shape), generator=generator, device=device)
        self._check_batch(noise, cond)
        x = noise
        for n, s in reversed(list(enumerate(self.solvers(solver)))):
            x = self.reverse_block(n, x, cond, s, use_ema=use_ema)
        return x

    # ------------------------------------------------------------------------------------ helpers
    def _check_index(self, n: int) -> None:
        if not 0 <= n < self.n_blocks:
            raise IndexError(f"block index {n} out of range for a chain of {self.n_blocks} blocks")

    def _check_batch(self, x: torch.Tensor, cond: torch.Tensor | None) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected samples of shape (B, {self.event_shape}), got {tuple(x.shape)}")
        if cond is not None and cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond has {cond.shape[0]} rows but x has {x.shape[0]}")
