"""Simulated operators of different proficiency, wrapped around any scripted expert.

robomimic's multi-human ("mh") datasets tag each demonstration with the proficiency of the person who
teleoperated it (``better``, ``okay``, ``worse``) and export the groups as filter keys. This module
makes the same kind of data from a scripted expert: :class:`OperatorExpert` perturbs the expert's
actions the way a less skilled teleoperator would, following an :class:`OperatorProfile`:

* ``noise`` — Gaussian noise (this std) added to every motion dimension at every step;
* ``speed`` — the motion dimensions scaled by this factor (< 1: a slower, more careful operator);
* ``pause_prob`` / ``pause_steps`` — hesitations: at each step after one of the expert's, with
  probability ``pause_prob``, a pause of ``pause_steps`` steps begins, during which the motion
  dimensions are 0 and the gripper dimensions repeat the expert's last command (the expert is not
  consulted, so its plan waits too);
* ``correction_prob`` / ``correction_steps`` / ``correction_size`` — wrong moves: with probability
  ``correction_prob`` per step, a random unit direction times ``correction_size`` is added to the
  motion dimensions for ``correction_steps`` steps; the expert is closed-loop, so it then corrects it.

"Motion dimensions" are every action dimension except ``gripper_dims`` (see :func:`gripper_dims_for`).
Perturbed actions are clipped to the action bounds. The ``expert`` profile changes nothing: its actions
are byte-identical to the plain expert's.

Randomness comes from the wrapper's own generator, seeded from the episode seed
(``SeedSequence(seed, spawn_key=(OPERATOR_SPAWN_KEY,))``) at ``reset(seed=...)``, so an episode's
content depends on its seed only — not on the number of worker processes. :func:`choose_operator`
picks an episode's operator from a weighted set, deterministically in the seed (another spawn key).

This module needs only numpy (and :mod:`lfm_policy.config`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lfm_policy.config import Config, check
from lfm_policy.envs.registry import reset_expert, task_family
from lfm_policy.errors import LfmPolicyError

#: ``spawn_key`` of an episode's perturbation stream (independent of the env's and the expert's).
OPERATOR_SPAWN_KEY = 0x0A7
#: ``spawn_key`` of the per-episode operator choice.
CHOICE_SPAWN_KEY = 0x0C5


@dataclasses.dataclass
class OperatorProfile(Config):
    """How a simulated operator deviates from the expert (see the module docstring).

    Attributes:
        name: Profile name, used as the episode's ``operator`` and as a filter key.
        noise: Std of the Gaussian noise added to the motion dimensions (action units).
        speed: Scale of the motion dimensions (< 1: slower than the expert).
        pause_prob: Probability per step that a pause starts.
        pause_steps: Length of a pause in steps.
        correction_prob: Probability per step that a wrong move starts.
        correction_steps: Length of a wrong move in steps.
        correction_size: Norm of the wrong move added to the motion dimensions (action units).
        description: One line for docs and ``--help``.

    """

    name: str = "expert"
    noise: float = 0.0
    speed: float = 1.0
    pause_prob: float = 0.0
    pause_steps: int = 0
    correction_prob: float = 0.0
    correction_steps: int = 0
    correction_size: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        check(bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name), "name",
              f"must be a non-empty name of letters, digits, '_' or '-', got {self.name!r}")
        for field in ("noise", "speed", "pause_prob", "correction_prob", "correction_size"):
            value = getattr(self, field)
            check(isinstance(value, (int, float)) and math.isfinite(value), field,
                  f"must be a finite number, got {value!r}")
        check(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")
        check(self.speed > 0, "speed", f"must be > 0, got {self.speed}")
        check(self.correction_size >= 0, "correction_size", f"must be >= 0, got {self.correction_size}")
        for prob, steps in (("pause_prob", "pause_steps"), ("correction_prob", "correction_steps")):
            check(0 <= getattr(self, prob) <= 1, prob, f"must be in [0, 1], got {getattr(self, prob)}")
            check(isinstance(getattr(self, steps), int) and getattr(self, steps) >= 0, steps,
                  f"must be an int >= 0, got {getattr(self, steps)!r}")
            check(getattr(self, prob) == 0 or getattr(self, steps) >= 1, steps, f"must be >= 1 when {prob} > 0")

    @property
    def is_identity(self) -> bool:
        """Whether this profile leaves the expert's actions unchanged."""
        return (self.noise == 0 and self.speed == 1 and (self.pause_prob == 0 or self.pause_steps == 0)
                and (self.correction_prob == 0 or self.correction_steps == 0 or self.correction_size == 0))


#: Built-in profiles (robomimic's ``better``/``okay``/``worse`` plus ``expert``, ``fast`` and ``slow``).
#: Measured success rates per task are in docs/demonstrations.md.
PROFILES: dict[str, OperatorProfile] = {
    p.name: p
    for p in (
        OperatorProfile("expert", description="the scripted expert itself (actions unchanged)"),
        OperatorProfile("better", noise=0.05, speed=0.95, pause_prob=0.01, pause_steps=3,
                        description="a skilled operator: a little noise, rare short pauses"),
        OperatorProfile("okay", noise=0.1, speed=0.85, pause_prob=0.02, pause_steps=4, correction_prob=0.02,
                        correction_steps=3, correction_size=0.5,
                        description="an average operator: more noise, slower, some pauses and wrong moves"),
        OperatorProfile("worse", noise=0.25, speed=0.8, pause_prob=0.04, pause_steps=6, correction_prob=0.05,
                        correction_steps=4, correction_size=0.7,
                        description="an unskilled operator: noisy, slow, hesitant, frequent wrong moves"),
        OperatorProfile("fast", noise=0.1, speed=1.0, correction_prob=0.02, correction_steps=2,
                        correction_size=0.5, description="quick but sloppy: full speed, noisy, overshoots"),
        OperatorProfile("slow", noise=0.03, speed=0.7, pause_prob=0.02, pause_steps=4,
                        description="careful and slow: little noise, 70 % speed, pauses"),
    )
}


def get_profile(name: str) -> OperatorProfile:
    """The built-in profile ``name``.

    Raises:
        LfmPolicyError: Unknown name (the message lists the built-in ones).

    """
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise LfmPolicyError(f"unknown operator {name!r}; built-in operators: {', '.join(PROFILES)}") from None


def check_operator_weights(operators: Mapping[str, float], where: str = "operators") -> dict[str, float]:
    """Validate ``{name: weight}`` (built-in names, finite weights >= 0, some > 0); return it as floats.

    Raises:
        LfmPolicyError: Naming ``where`` and the bad entry.

    """
    if not isinstance(operators, Mapping) or not operators:
        raise LfmPolicyError(f"{where}: expected a non-empty mapping of operator name to weight, got {operators!r}")
    out: dict[str, float] = {}
    for name, weight in operators.items():
        if name not in PROFILES:
            raise LfmPolicyError(f"{where}: unknown operator {name!r}; built-in operators: {', '.join(PROFILES)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise LfmPolicyError(f"{where}: weight of {name!r} must be a finite number >= 0, got {weight!r}")
        out[name] = float(weight)
    if not any(out.values()):
        raise LfmPolicyError(f"{where}: at least one weight must be > 0, got {out}")
    return out


def choose_operator(operators: Mapping[str, float], seed: int) -> str:
    """The operator of the episode seeded with ``seed``, drawn from ``{name: weight}``.

    Deterministic in ``seed`` and independent of the mapping's order (names are sorted first).
    """
    weights = check_operator_weights(operators)
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(CHOICE_SPAWN_KEY,)))
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def gripper_dims_for(task: str) -> tuple[int, ...]:
    """Action dimensions that are gripper commands (not perturbed as motion), by the task's family."""
    try:
        family = task_family(task)
    except LfmPolicyError:
        family = task.split("/", 1)[0]
    return {"toy": (), "metaworld": (3,), "robosuite": (6,)}.get(family, ())


class OperatorExpert:
    """An expert as operated by someone with ``profile``'s proficiency (see the module docstring).

    Args:
        expert: Any expert with ``reset([seed=])`` and ``act(obs) -> action``.
        profile: The operator (an :class:`OperatorProfile` or a built-in profile's name).
        gripper_dims: Action dimensions that are gripper commands (kept as the expert's during pauses,
            never noised or scaled).
        action_low, action_high: Action bounds the perturbed actions are clipped to (default -1, 1).

    Attributes:
        operator: The profile's name.

    """

    def __init__(self, expert: Any, profile: OperatorProfile | str, *, gripper_dims: Sequence[int] = (),
                 action_low: Any = None, action_high: Any = None) -> None:
        self.expert = expert
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.gripper_dims = tuple(int(d) for d in gripper_dims)
        self.action_low = -1.0 if action_low is None else np.asarray(action_low, np.float32)
        self.action_high = 1.0 if action_high is None else np.asarray(action_high, np.float32)
        self._rng = np.random.default_rng(np.random.SeedSequence(None, spawn_key=(OPERATOR_SPAWN_KEY,)))
        self._start_episode()

    @property
    def operator(self) -> str:
        """The profile's name (recorded as the episode's ``operator``)."""
        return self.profile.name

    @property
    def mode(self) -> Any:
        """The wrapped expert's ``mode`` (AttributeError when it has none)."""
        return self.expert.mode

    def _start_episode(self) -> None:
        self._last: np.ndarray | None = None
        self._pause_left = 0
        self._paused = False
        self._correction_left = 0
        self._correction: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: reseed the perturbations from ``seed`` and reset the wrapped expert."""
        if seed is not None:
            self._rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(OPERATOR_SPAWN_KEY,)))
        reset_expert(self.expert, seed)
        self._start_episode()

    def act(self, obs: Any) -> np.ndarray:
        """The expert's action for ``obs`` as this operator would command it."""
        p = self.profile
        if p.is_identity:
            return self.expert.act(obs)
        rng = self._rng
        moved = self._last is not None and not self._paused  # pauses start after a step of the expert's
        if moved and p.pause_steps and rng.random() < p.pause_prob:
            self._pause_left = p.pause_steps
        self._paused = self._pause_left > 0
        if self._paused:
            self._pause_left -= 1
            action = np.zeros_like(self._last)
            for d in self.gripper_dims:
                action[d] = self._last[d]
            return action
        expert_action = np.asarray(self.expert.act(obs), dtype=np.float32).reshape(-1)
        self._last = expert_action
        motion = np.ones(expert_action.shape[0], dtype=bool)
        motion[list(self.gripper_dims)] = False
        action = expert_action.astype(np.float64)
        action[motion] *= p.speed
        if (self._correction_left == 0 and p.correction_steps and p.correction_size
                and rng.random() < p.correction_prob):
            direction = rng.standard_normal(int(motion.sum()))
            self._correction = p.correction_size * direction / max(np.linalg.norm(direction), 1e-12)
            self._correction_left = p.correction_steps
        if self._correction_left > 0:
            action[motion] += self._correction
            self._correction_left -= 1
        if p.noise:
            action[motion] += rng.normal(0.0, p.noise, int(motion.sum()))
        return np.clip(action, self.action_low, self.action_high).astype(np.float32)
