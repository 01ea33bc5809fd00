"""Per-block distillation of a trained chain: one-step (k-step) students of each block's reverse map.

A block's reverse transport ``T_n(x, c)`` (t: 1 → 0) is a deterministic map. Its student is a copy of
the block (same network, initialised from the teacher's EMA weights) whose **Euler-k** reverse map
``S_n(x, c)`` is trained with L2 to match ``T_n`` integrated accurately (RK4 with enough steps). A
1-step student starts as the teacher evaluated once, i.e. at the teacher's one-step error, and costs
one network evaluation: a distilled chain of N blocks samples a chunk with N evaluations.

Where the student's inputs come from (``DistillConfig.inputs``):

* ``teacher_path``: push the training actions, each with its own observation, through the teacher's
  blocks 0..n−1 and forward through block n (``y'``: the block's noise side, where its reverse map
  starts at inference), and take the teacher's accurate reverse of block n from ``y'`` as the target.
  Every block is independent of the others (LFM's locality). (Using the pushed data itself as the
  target would save the reverse solve, but it is an exact pair only if the forward solve is exact, and
  the forward map is stiff next to the point masses of robot actions — gripper at ±1, clipped
  actions: on the toy task block 0's forward endpoint still moved 1 % between 256 and 512 RK4 steps,
  while its reverse map converged below 1 % with 8.)
* ``student_path``: draw z ~ N(0, I), run the already distilled students N−1..n+1 (with the same
  observation), and take the teacher's accurate reverse of block n from there as the target, so each
  student learns on the inputs it will actually get at inference and corrects its predecessors' drift.

The condition of each row stays with that row through every map (there is no separate array of
conditions that could be shuffled); ``tests/flow/test_distill.py`` has the planted-shuffle test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lfm_policy.config import Config, check
from lfm_policy.flow.block import weighted_mean
from lfm_policy.flow.solvers import STUDENT, SolverConfig

INPUTS = ("teacher_path", "student_path")


@dataclass
class DistillConfig(Config):
    """How a flow head's blocks are distilled (set by ``lfm-policy distill``).

    Attributes:
        blocks: Blocks that get a student (default: every block). Trained from the last block (the
            free one, which sees the noise) to the first.
        steps: Euler steps of each student (1: one network evaluation per block).
        inputs: ``teacher_path`` or ``student_path`` (module docstring).
        teacher_solver: Accurate solver of the teacher's maps (RK4; ``teacher_steps`` per block wins).
        teacher_steps: RK4 steps per block chosen so that doubling them moves the endpoint by less
            than ``tolerance`` of its RMS (:func:`choose_teacher_steps`).
        tolerance: See ``teacher_steps``.
        reuse: Each generated pair is trained on about this many times: every step generates pairs for
            ``1/reuse`` of the batch rows into a replay of ``replay_size`` pairs and trains on a batch drawn
            from it (1: every pair is fresh and used once).
        replay_size: Pairs kept for reuse (oldest replaced first).
        teacher: Path of the teacher checkpoint (recorded).
        teacher_sha256: sha256 of its ``model.safetensors`` (a resume checks it).

    """

    blocks: tuple[int, ...] | None = None
    steps: int = 1
    inputs: str = "student_path"
    teacher_solver: SolverConfig = field(default_factory=lambda: SolverConfig(method="rk4", steps=8))
    teacher_steps: tuple[int, ...] | None = None
    tolerance: float = 0.01
    reuse: int = 8
    replay_size: int = 16384
    teacher: str = ""
    teacher_sha256: str = ""

    def __post_init__(self) -> None:
        if self.blocks is not None:
            self.blocks = tuple(sorted({int(b) for b in self.blocks}))
            check(len(self.blocks) > 0 and min(self.blocks) >= 0, "blocks", "need at least one block index ≥ 0")
        if self.teacher_steps is not None:
            self.teacher_steps = tuple(int(k) for k in self.teacher_steps)
        check(isinstance(self.steps, int) and self.steps >= 1, "steps", f"must be an int ≥ 1, got {self.steps}")
        check(self.inputs in INPUTS, "inputs", f"choose from {INPUTS}, got {self.inputs!r}")
        check(self.teacher_solver.method != STUDENT and not self.teacher_solver.adaptive, "teacher_solver",
              "must be a fixed-step ODE solver")
        check(0 < self.tolerance < 1, "tolerance", "must be in (0, 1)")
        check(isinstance(self.reuse, int) and self.reuse >= 1, "reuse", f"must be an int ≥ 1, got {self.reuse}")
        check(self.replay_size >= 1, "replay_size", "must be ≥ 1")

    def block_list(self, n_blocks: int) -> list[int]:
        """Distilled blocks in training order (last block first)."""
        blocks = list(range(n_blocks)) if self.blocks is None else list(self.blocks)
        check(max(blocks) < n_blocks, "blocks", f"the chain has {n_blocks} blocks, got {blocks}")
        return sorted(blocks, reverse=True)


def teacher_solver(cfg: DistillConfig, n: int) -> SolverConfig:
    """The accurate solver of block n's teacher map."""
    if cfg.teacher_steps is not None and n < len(cfg.teacher_steps):
        return SolverConfig(method=cfg.teacher_solver.method, steps=cfg.teacher_steps[n])
    return cfg.teacher_solver


def teacher_solvers(cfg: DistillConfig, n_blocks: int) -> list[SolverConfig]:
    """:func:`teacher_solver` of every block."""
    return [teacher_solver(cfg, n) for n in range(n_blocks)]


@torch.no_grad()
def teacher_path_pair(chain, n: int, x_data: torch.Tensor, cond: torch.Tensor | None,
                      solver: SolverConfig | list[SolverConfig]) -> tuple[torch.Tensor, torch.Tensor]:
    """(student input, target) of block n from data: the data pushed to block n's noise side, and its reverse.

    Args:
        chain: The teacher :class:`~lfm_policy.flow.chain.LocalFlowChain`.
        n: Block index.
        x_data: (B, *event) normalized actions.
        cond: (B, Dc) each row's condition.
        solver: Accurate fixed-step solver, or one per block (``solver[m]`` pushes through block m).

    Returns:
        ``(x_noise_side, target)``, each (B, *event): the data pushed through blocks 0..n (t: 0→1 in
        each), and block n's accurate reverse map of it.

    """
    solvers = solver if isinstance(solver, list) else [solver] * chain.n_blocks
    y = x_data
    for m in range(n + 1):
        y = chain.ema_blocks[m].forward_transport(y, cond, solvers[m])
    return y, chain.ema_blocks[n].reverse_transport(y, cond, solvers[n])


@torch.no_grad()
def student_path_pair(chain, n: int, cond: torch.Tensor | None, solver: SolverConfig, *,
                      generator: torch.Generator | None = None, batch_size: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(student input, target) of block n on the students' own path from fresh noise.

    The input is z ~ N(0, I) run through the (EMA) students of blocks N−1..n+1 (a block without a
    student uses its teacher with ``solver``); the target is the teacher's reverse of block n from it.
    Each row keeps its condition ``cond[i]`` in every map.

    Returns:
        ``(x_in, target)``, each (B, *event).

    """
    b = cond.shape[0] if cond is not None else batch_size
    device = cond.device if cond is not None else chain.n_trained.device
    x = torch.randn((b, *chain.event_shape), generator=generator, device=device)
    for m in range(chain.n_blocks - 1, n, -1):
        use = SolverConfig(method=STUDENT) if chain.config.student(m) and bool(chain.student_done[m]) else solver
        x = chain.reverse_block(m, x, cond, use)
    return x, chain.ema_blocks[n].reverse_transport(x, cond, solver)


def make_pairs(chain, n: int, x_data: torch.Tensor, cond: torch.Tensor | None, cfg: DistillConfig, *,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(student input, teacher target) of block n for these rows (``cfg.inputs`` decides how)."""
    if cfg.inputs == "teacher_path":
        return teacher_path_pair(chain, n, x_data, cond, teacher_solvers(cfg, chain.n_blocks))
    return student_path_pair(chain, n, cond, teacher_solver(cfg, n), generator=generator,
                             batch_size=x_data.shape[0])


class PairReplay:
    """The last ``size`` generated (input, target, condition) rows, drawn from with replacement.

    Rows are stored and drawn together, so a pair never changes its condition. Not saved with the
    weights: after a resume it fills again from fresh pairs.
    """

    def __init__(self, size: int):
        self.size = size
        self.rows: list[torch.Tensor] | None = None  # [x_in (M, ...), target (M, ...), cond (M, Dc) or empty]
        self._next = 0

    def __len__(self) -> int:
        return 0 if self.rows is None else self.rows[0].shape[0]

    def add(self, x_in: torch.Tensor, target: torch.Tensor, cond: torch.Tensor | None) -> None:
        """Append rows (FIFO beyond ``size``)."""
        c = cond if cond is not None else x_in.new_zeros(x_in.shape[0], 0)
        new = [x_in.detach(), target.detach(), c.detach()]
        if self.rows is None or len(self) < self.size:
            self.rows = new if self.rows is None else [torch.cat([a, b])[: self.size] for a, b in zip(self.rows, new)]
            return
        idx = (self._next + torch.arange(new[0].shape[0], device=x_in.device)) % self.size
        for store, rows in zip(self.rows, new):
            store[idx] = rows
        self._next = int(idx[-1] + 1) % self.size

    def draw(self, b: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """``b`` rows (x_in, target, cond) drawn uniformly with replacement."""
        idx = torch.randint(len(self), (b,), generator=generator, device=self.rows[0].device)
        return tuple(r[idx] for r in self.rows)


def distill_loss(chain, n: int, x_data: torch.Tensor, cond: torch.Tensor | None, cfg: DistillConfig, *,
                 replay: PairReplay | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """L2 between block n's (trained) student map and the teacher's accurate map.

    Without ``replay`` every row of the batch gets a fresh pair. With it, ``ceil(B / cfg.reuse)`` rows
    get fresh pairs, which join the replay, and the loss is over B rows drawn from the replay.
    """
    b = x_data.shape[0]
    fresh = b if replay is None else -(-b // cfg.reuse)
    if replay is not None and len(replay) < b:  # start of a stage: fill up with whole batches
        fresh = b
    keep = torch.randperm(b, generator=generator, device=x_data.device)[:fresh] if fresh < b else slice(None)
    c = cond[keep] if cond is not None else None
    x_in, target = make_pairs(chain, n, x_data[keep], c, cfg, generator=generator)
    if replay is not None:
        replay.add(x_in, target, c)
        x_in, target, c_all = replay.draw(b, generator)
        c = c_all if cond is not None else None
    student = chain.students[str(n)]
    out = student.reverse_transport(x_in, c, SolverConfig(method="euler", steps=chain.config.student(n)))
    return weighted_mean((out - target) ** 2, None)


@torch.no_grad()
def choose_teacher_steps(chain, x_data: torch.Tensor, cond: torch.Tensor | None, *, start: int = 4,
                         tolerance: float = 0.01, max_steps: int = 128, method: str = "rk4") -> list[int]:
    """Per block, the steps (doubling from ``start``) at which its reverse map has converged.

    Block n is probed where its reverse map starts at inference: the data pushed through blocks 0..n
    (``push_steps`` = 32 steps of ``method`` each). Its reverse map from there is integrated with k and
    2k steps; the first k whose endpoints differ by less than ``tolerance`` of the endpoint's RMS
    gives 2k (the more accurate of the two), at most ``max_steps``.
    """
    steps, y = [], x_data
    push = SolverConfig(method=method, steps=32)
    for n in range(chain.n_blocks):
        block = chain.ema_blocks[n]
        y = block.forward_transport(y, cond, push)
        k = start
        while True:
            a = block.reverse_transport(y, cond, SolverConfig(method=method, steps=k))
            b = block.reverse_transport(y, cond, SolverConfig(method=method, steps=2 * k))
            rel = float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12))
            if rel < tolerance or 2 * k >= max_steps:
                break
            k *= 2
        steps.append(2 * k)
    return steps
