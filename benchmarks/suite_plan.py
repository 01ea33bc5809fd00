"""What each benchmark suite runs: tasks, methods (table rows), training seeds and budgets.

A suite is a list of :class:`Cell` s — one (task, observation kind) each — run with every method of
:func:`methods`. Every method of a cell trains from the same shipped config (only
``policy.head.kind`` differs: same trunk, batch, steps and seed), on the same demonstrations, and is
evaluated on the same episode seeds (100000, 100001, ...): paired comparisons.

Suites:

* ``smoke``: two tasks (toy, one multimodal Meta-World), tiny budgets — minutes on 2 CPU cores;
  checks the whole pipeline, its numbers mean nothing.
* ``cpu``: the low-dim suite sized for a 2-core CPU: toy, 10 Meta-World tasks, robosuite Lift / Can /
  Square and the 7 multimodal ``-detour`` tasks, 50 evaluation episodes per row, 3 training seeds on
  the headline (multimodal) cells, 1 elsewhere. Hours per cell group; resumable.
* ``gpu``: image policies (toy, Meta-World, robosuite) from the GPU-sized configs, for the lent
  H100/H200 machine.
"""

from __future__ import annotations

import dataclasses
import re

from lfm_policy.envs.registry import DETOUR_TASKS
from lfm_policy.flow import SolverConfig
from lfm_policy.heads import DiffusionSampler

CONFIGS = {"toy": "toy_lowdim.json", "metaworld": "metaworld_lowdim_cpu.json", "robosuite": "robosuite_lowdim_cpu.json"}
IMAGE_CONFIGS = {"toy": "toy_image_cpu.json", "metaworld": "metaworld_image.json", "robosuite": "robosuite_image.json"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One table row: a head, whether its distilled student is used, and the sampler."""

    label: str
    head: str
    distilled: bool = False
    sampler: object = None  # None: the checkpoint's own (LFM: its sample_solver; students: one step)


def methods(n_blocks: int) -> list[Method]:
    """The rows of every table.

    FM euler×N runs at the distilled LFM chain's NFE (N = its number of blocks); LFM euler×(10 // N)
    per block runs at (at most) the NFE of FM euler×10 and DDIM-10, so both flows meet at NFE N and 10.
    ``lfm_steps`` is the LFM head trained with N × the config's steps, ``lfm_free`` the LFM head whose
    free block trains 3 × the steps of each other block (same total; see ``suite.train_config``), and
    ``lfm_free_params`` the LFM head whose free block also holds 3 × each other block's parameters (same
    total steps and parameters), with its distilled student.
    """
    per_block = 10 // n_blocks
    return [
        Method("LFM ODE (midpoint×1 per block)", "lfm"),
        Method(f"LFM euler×{per_block} per block", "lfm", sampler=SolverConfig(method="euler", steps=per_block)),
        Method("LFM distilled", "lfm", True),
        Method(f"FM euler×{n_blocks}", "fm", sampler=SolverConfig(method="euler", steps=n_blocks)),
        Method("FM euler×10", "fm", sampler=SolverConfig(method="euler", steps=10)),
        Method("FM distilled", "fm", True),
        Method("DDIM-2", "diffusion", sampler=DiffusionSampler("ddim", 2)),
        Method("DDIM-4", "diffusion", sampler=DiffusionSampler("ddim", 4)),
        Method("DDIM-10", "diffusion", sampler=DiffusionSampler("ddim", 10)),
        Method("DDPM-100", "diffusion", sampler=DiffusionSampler("ddpm")),
        Method("regression", "regression"),
        # LFM with N× the optimizer steps (each block trains as many steps as FM's one network; about FM's
        # training wall time, since a block has 1/N of its parameters). Last, so earlier rows keep their files.
        Method("LFM ×N steps (midpoint×1 per block)", "lfm_steps"),
        Method(f"LFM ×N steps, euler×{per_block} per block", "lfm_steps",
               sampler=SolverConfig(method="euler", steps=per_block)),
        # LFM with the config's steps, the free block training 3 × as many as each other block
        # (``head.block_steps``; 2 blocks: 1/4 + 3/4). Last, so earlier rows keep their files.
        Method("LFM free×3 steps (midpoint×1 per block)", "lfm_free"),
        Method(f"LFM free×3 steps, euler×{per_block} per block", "lfm_free",
               sampler=SolverConfig(method="euler", steps=per_block)),
        # As lfm_free, the free block also holding 3 × each other block's parameters
        # (``head.block_params``, same total), and its student. Last, so earlier rows keep their files.
        Method("LFM free×3 steps+params (midpoint×1 per block)", "lfm_free_params"),
        Method(f"LFM free×3 steps+params, euler×{per_block} per block", "lfm_free_params",
               sampler=SolverConfig(method="euler", steps=per_block)),
        Method("LFM free×3 steps+params distilled", "lfm_free_params", True),
    ]


def canonical(label: str) -> str:
    """FM at the LFM chain's NFE and LFM at NFE ≈ 10 are one table row each whatever N is."""
    if label.startswith("LFM"):  # every LFM training's "euler×(10 // N) per block" row
        return re.sub(r"euler×\d+ per block$", "euler×10/N per block (NFE ≤ 10)", label)
    return "FM euler×N (LFM's NFE)" if label.startswith("FM euler×") and label != "FM euler×10" else label


@dataclasses.dataclass(frozen=True)
class Cell:
    """One task of a suite.

    Attributes:
        task: Registered task name.
        seeds: Training seeds (every method trains once per seed).
        images: Image policy (the family's image config) instead of low-dim.
        headline: Shown in the README's headline table.

    """

    task: str
    seeds: tuple[int, ...] = (0,)
    images: bool = False
    headline: bool = False

    @property
    def family(self) -> str:
        """``toy``, ``metaworld`` or ``robosuite``."""
        return self.task.split("/", 1)[0]

    @property
    def multimodal(self) -> bool:
        """Whether the task's demonstrations have several modes (the toy tasks and the detour variants)."""
        return self.family == "toy" or self.task in DETOUR_TASKS

    @property
    def key(self) -> str:
        """Directory name of the cell."""
        return self.task.replace("/", "_") + ("_image" if self.images else "")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Per-suite sizes.

    Attributes:
        demos: Demonstrations per family.
        eval_episodes: Evaluation episodes per row (the same seeds for every row).
        steps: Optimizer steps per training run by family (None: the config's own).
        distill_steps: Steps per distilled student (per block).
        latency_reps: Timed batch-1 chunk calls per row.
        overrides: Extra ``key=value`` overrides for every training run.

    """

    demos: dict[str, int]
    eval_episodes: int
    steps: dict[str, int | None]
    distill_steps: int
    latency_reps: int
    overrides: tuple[str, ...] = ()


_MW_UNIMODAL = ("reach-v3", "push-v3", "door-open-v3", "drawer-open-v3", "button-press-topdown-v3", "pick-place-v3",
                "hammer-v3", "window-open-v3", "drawer-close-v3", "faucet-open-v3")  # fmt: skip
_DETOUR = tuple(DETOUR_TASKS)
_HEADLINE_SEEDS = (0, 1, 2)

SUITES: dict[str, tuple[list[Cell], Budget]] = {
    "smoke": (
        [Cell("toy/point-obstacle", headline=True), Cell("metaworld/reach-v3-detour", headline=True)],
        Budget(demos={"toy": 100, "metaworld": 20, "robosuite": 10}, eval_episodes=10,
               steps={"toy": 400, "metaworld": 400, "robosuite": 400}, distill_steps=100, latency_reps=20),
    ),
    "cpu": (
        # Multimodal headline cells first (they are what the suite is for), then the unimodal tasks.
        [Cell(t, (0,), headline=True) for t in _DETOUR]
        + [Cell("toy/point-obstacle", _HEADLINE_SEEDS, headline=True)]
        + [Cell(t, _HEADLINE_SEEDS[1:], headline=True) for t in _DETOUR]
        + [Cell(f"metaworld/{t}") for t in _MW_UNIMODAL]
        + [Cell(f"robosuite/{t}") for t in ("Lift", "PickPlaceCan", "NutAssemblySquare")],
        Budget(demos={"toy": 300, "metaworld": 50, "robosuite": 100}, eval_episodes=50,
               steps={"toy": 6000, "metaworld": None, "robosuite": None}, distill_steps=2000, latency_reps=200),
    ),
    "gpu": (
        [Cell("toy/point-obstacle", images=True, headline=True),
         Cell("metaworld/button-press-topdown-v3", images=True, headline=True),
         Cell("robosuite/Lift", images=True, headline=True)],
        Budget(demos={"toy": 200, "metaworld": 50, "robosuite": 100}, eval_episodes=50,
               steps={"toy": None, "metaworld": 20000, "robosuite": 20000}, distill_steps=2000, latency_reps=100),
    ),
}  # fmt: skip
"""Suite name → (cells in run order, budget). A cell listed twice adds seeds to the same task."""


def config_name(cell: Cell) -> str:
    """The shipped config a cell trains from."""
    return (IMAGE_CONFIGS if cell.images else CONFIGS)[cell.family]
