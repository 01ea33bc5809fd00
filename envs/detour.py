"""Multimodal "detour" variants of simulated tasks: a keep-out column between the hand and its target.

``<task>-detour`` (e.g. ``metaworld/reach-v3-detour``, ``robosuite/Lift-detour``) is the base task
with a virtual vertical column placed on the straight line from where the hand starts to what it must
reach first (the goal, the button, the cube). At ``reset`` the column's centre is put at a fraction
``fraction`` of that line (in the table plane, xy) and its radius is ``radius``; the hand entering it
ends the episode as a failure (``info["collision"] = True``). The column is part of the observation,
so a policy can see it:

    keepout: float32 (3,) ``(centre_x, centre_y, radius)`` in the world frame (metres).

Going around it on the left or on the right are equally good strategies: the expert
(:class:`DetourExpert`) chooses one per episode, 50/50 from its own seeded generator (``modes=`` restricts
the choice), and the env reports the side actually taken once the hand has passed the column,
``info["mode"]`` in ``("left", "right")`` (None before), seen from the start looking at the target.
The average of the two strategies is the straight line through the column, so a head that averages
demonstrations (regression) collides where a generative head picks one side.

The column is not drawn in camera images: image policies read it through the ``keepout`` key. A
robomimic HDF5 export keeps the base task's ``env_args`` (the column is not a robosuite object) next
to our ``task`` attr: ``lfm-policy eval --env-from`` rebuilds the detour variant from that attr, while
robomimic's own tools, which read only ``env_args``, see the base task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lfm_policy.envs.registry import reset_expert
from lfm_policy.errors import LfmPolicyError

DETOUR_MODES: tuple[str, ...] = ("left", "right")
"""The two strategies of every detour task."""

Obs = dict[str, np.ndarray]


def _mw_hand(obs: Obs) -> np.ndarray:
    return np.asarray(obs["state"][:2], np.float64)


def _mw_object(obs: Obs) -> np.ndarray:
    return np.asarray(obs["state"][4:6], np.float64)


def _mw_goal(obs: Obs) -> np.ndarray:
    return np.asarray(obs["state"][36:38], np.float64)


def _rs_eef(obs: Obs) -> np.ndarray:
    return np.asarray(obs["robot0_eef_pos"][:2], np.float64)


def _rs_object(obs: Obs) -> np.ndarray:
    return np.asarray(obs["object"][:2], np.float64)


@dataclasses.dataclass(frozen=True)
class DetourSpec:
    """Where a task's keep-out column goes and how the expert goes around it.

    Attributes:
        base: Registered name of the base task.
        hand: ``obs -> (2,)`` the hand's (end effector's) xy.
        target: ``obs -> (2,)`` the xy the hand must reach first (read at reset).
        fraction: Column centre along the start→target line (0 start, 1 target), before clamping so
            that the start and the target stay ``radius + clearance`` away from the column.
        radius: Column radius (m); clamped to ``max_radius_fraction`` of the start→target distance.
        clearance: The expert's margin (m) outside the column.
        gain: The expert's proportional gain on the xy error (the action's xy is scaled to ≤ 1).
        tol: Distance (m) at which the expert's via-points count as reached.
        max_radius_fraction: Upper bound on radius / start→target distance (short approaches).

    """

    base: str
    hand: Callable[[Obs], np.ndarray]
    target: Callable[[Obs], np.ndarray]
    fraction: float = 0.4
    radius: float = 0.04
    clearance: float = 0.03
    gain: float = 10.0
    tol: float = 0.01
    max_radius_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise LfmPolicyError(f"detour {self.base}: fraction must be in (0, 1), got {self.fraction}")
        for name in ("radius", "clearance", "gain", "tol", "max_radius_fraction"):
            if getattr(self, name) <= 0:
                raise LfmPolicyError(f"detour {self.base}: {name} must be positive, got {getattr(self, name)}")


DETOUR_SPECS: dict[str, DetourSpec] = {
    "metaworld/reach-v3-detour": DetourSpec("metaworld/reach-v3", _mw_hand, _mw_goal),
    "metaworld/button-press-topdown-v3-detour": DetourSpec("metaworld/button-press-topdown-v3", _mw_hand, _mw_object),
    "metaworld/faucet-open-v3-detour": DetourSpec("metaworld/faucet-open-v3", _mw_hand, _mw_object),
    "metaworld/window-close-v3-detour": DetourSpec("metaworld/window-close-v3", _mw_hand, _mw_object),
    "metaworld/coffee-button-v3-detour": DetourSpec("metaworld/coffee-button-v3", _mw_hand, _mw_object),
    "robosuite/Lift-detour": DetourSpec("robosuite/Lift", _rs_eef, _rs_object, fraction=0.5, radius=0.02,
                                        clearance=0.012, gain=12.0, max_radius_fraction=0.25),
    "robosuite/PickPlaceCan-detour": DetourSpec("robosuite/PickPlaceCan", _rs_eef, _rs_object, fraction=0.5,
                                                radius=0.03, clearance=0.02, gain=12.0),
}  # fmt: skip
"""The detour variants; the registry lists the same names (``registry.DETOUR_TASKS``, checked by a test)."""


def detour_spec(name: str) -> DetourSpec:
    """Return the :class:`DetourSpec` of detour task ``name`` (raises LfmPolicyError if unknown)."""
    try:
        return DETOUR_SPECS[name]
    except KeyError:
        raise LfmPolicyError(f"{name!r} is not a detour task; known: {', '.join(DETOUR_SPECS)}") from None


@dataclasses.dataclass(frozen=True)
class Zone:
    """A keep-out column for one episode (xy plane, metres).

    Attributes:
        centre: (2,) column centre.
        radius: Column radius.
        start: (2,) the hand at reset.
        direction: (2,) unit vector from the start towards the target.

    """

    centre: np.ndarray
    radius: float
    start: np.ndarray
    direction: np.ndarray

    @classmethod
    def between(cls, start: np.ndarray, target: np.ndarray, spec: DetourSpec) -> Zone:
        """Place the column on the segment ``start → target`` as ``spec`` says."""
        delta = np.asarray(target, np.float64) - np.asarray(start, np.float64)
        dist = float(np.linalg.norm(delta))
        if dist < 1e-6:
            raise LfmPolicyError(f"detour {spec.base}: the hand starts on its target; no room for a column")
        radius = min(spec.radius, spec.max_radius_fraction * dist)
        margin = radius + spec.clearance
        along = float(np.clip(spec.fraction * dist, min(margin, dist / 2), max(dist - margin, dist / 2)))
        direction = delta / dist
        return cls(np.asarray(start, np.float64) + along * direction, radius, np.array(start, np.float64), direction)

    def side(self, point: np.ndarray) -> float:
        """> 0 when ``point`` is to the left of the start→target line (seen from the start), < 0 right."""
        rel = np.asarray(point, np.float64) - self.centre
        return float(self.direction[0] * rel[1] - self.direction[1] * rel[0])

    def past(self, point: np.ndarray) -> bool:
        """Whether ``point`` has passed the column's centre along the start→target direction."""
        return float(np.dot(np.asarray(point, np.float64) - self.centre, self.direction)) > 0.0

    def inside(self, point: np.ndarray) -> bool:
        """Whether ``point`` (xy) is inside the column."""
        return float(np.linalg.norm(np.asarray(point, np.float64) - self.centre)) < self.radius

    def as_obs(self) -> np.ndarray:
        """float32 (3,) ``(centre_x, centre_y, radius)``."""
        return np.array([*self.centre, self.radius], np.float32)


class DetourEnv(gym.Wrapper):
    """A base task with a keep-out column (see the module docstring).

    Attributes not defined here (``task_name``, ``max_episode_steps``, ``get_state``, ``env_meta``, ...)
    are the base env's.

    Args:
        env: The base task's env (from the registry).
        spec: Where the column goes.
        name: The detour task's registered name (recorded by ``env_description``).

    """

    def __init__(self, env: gym.Env, spec: DetourSpec, name: str) -> None:
        super().__init__(env)
        self.spec_detour = spec
        self.detour_name = name
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces, "keepout": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
        self.zone: Zone | None = None
        self._mode: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def _observe(self, obs: Obs) -> Obs:
        assert self.zone is not None
        return {**obs, "keepout": self.zone.as_obs()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Obs, dict[str, Any]]:
        """Reset the base task and place the column; ``info`` gains ``mode`` (None) and ``collision``."""
        obs, info = self.env.reset(seed=seed, options=options)
        spec = self.spec_detour
        self.zone = Zone.between(spec.hand(obs), spec.target(obs), spec)
        self._mode = None
        return self._observe(obs), {**info, "mode": None, "collision": False}

    def step(self, action: np.ndarray) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        """Step the base task; entering the column terminates the episode as a failure."""
        if self.zone is None:
            raise LfmPolicyError(f"{self.detour_name}: call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        hand = self.spec_detour.hand(obs)
        collision = self.zone.inside(hand)
        if self._mode is None and self.zone.past(hand):
            self._mode = "left" if self.zone.side(hand) > 0 else "right"
        info = {**info, "mode": self._mode, "collision": collision}
        if collision:
            info["is_success"] = False
            terminated, truncated = True, False
        return self._observe(obs), reward, terminated, truncated, info

    def env_description(self) -> dict[str, Any]:
        """The base env's description plus the column's parameters."""
        own = getattr(self.env, "env_description", None)
        desc = dict(own()) if callable(own) else {}
        spec = self.spec_detour
        desc["detour"] = {"task": self.detour_name, "base": spec.base, "fraction": spec.fraction,
                          "radius": spec.radius, "max_radius_fraction": spec.max_radius_fraction}
        return desc


class DetourExpert:
    """The base task's expert, first steered around the column on a side drawn per episode.

    The hand goes in straight lines through two via-points beside the column, ``centre ∓ a·dir +
    side·a·perp`` with ``a = radius + clearance`` (the xy of the action is ``gain * error``, scaled
    to ≤ 1), while the base expert's action supplies every other dimension (height, rotation, gripper);
    after the second via-point the base expert has full control.

    Args:
        env: A :class:`DetourEnv`.
        base_expert: The base task's expert (made on ``env.env``).
        seed: Seed of the side generator; ``reset(seed=...)`` reseeds it per episode.
        modes: The sides the expert may choose from (uniformly); None means both.

    Raises:
        LfmPolicyError: For an unknown mode (the message lists the known ones).

    """

    def __init__(self, env: DetourEnv, base_expert: Any, seed: int | None = None,
                 modes: tuple[str, ...] | list[str] | None = None) -> None:
        bad = [m for m in (modes or ()) if m not in DETOUR_MODES]
        if bad or (modes is not None and not modes):
            raise LfmPolicyError(f"detour expert: unknown mode(s) {bad or list(modes or [])}; "
                                 f"this task has {list(DETOUR_MODES)}")
        self.env = env
        self.base = base_expert
        self.modes = tuple(dict.fromkeys(modes)) if modes is not None else DETOUR_MODES
        self._rng = self._make_rng(seed)
        self.mode = self.modes[0]
        self._via: list[np.ndarray] | None = None

    @staticmethod
    def _make_rng(seed: int | None) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xD7,)))

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: reseed (if ``seed`` is given), draw the side, reset the base expert."""
        if seed is not None:
            self._rng = self._make_rng(seed)
        self.mode = self.modes[int(self._rng.integers(len(self.modes)))]
        self._via = None
        reset_expert(self.base, seed)

    def _plan(self) -> list[np.ndarray]:
        zone = self.env.zone
        if zone is None:
            raise LfmPolicyError("detour expert: the env has not been reset")
        a = zone.radius + self.env.spec_detour.clearance
        perp = np.array([-zone.direction[1], zone.direction[0]])  # left of the direction
        offset = (1.0 if self.mode == "left" else -1.0) * a * perp
        return [zone.centre - a * zone.direction + offset, zone.centre + a * zone.direction + offset]

    def act(self, obs: Obs) -> np.ndarray:
        """Return the action for ``obs``: the base expert's, with xy steered while via-points remain."""
        action = np.array(self.base.act(obs), dtype=np.float32)
        if self._via is None:
            self._via = self._plan()
        spec = self.env.spec_detour
        hand = spec.hand(obs)
        while self._via and np.linalg.norm(self._via[0] - hand) < spec.tol:
            self._via.pop(0)
        if self._via:
            xy = spec.gain * (self._via[0] - hand)
            action[:2] = xy / max(1.0, float(np.abs(xy).max()))
        return action


def make_detour_env(name: str, make_base: Callable[..., gym.Env], **kwargs: Any) -> DetourEnv:
    """Wrap ``make_base(**kwargs)`` (the base task's env) as detour task ``name``."""
    return DetourEnv(make_base(**kwargs), detour_spec(name), name)


def make_detour_expert(name: str, env: DetourEnv, make_base_expert: Callable[[gym.Env], Any],
                       **options: Any) -> DetourExpert:
    """The expert of detour task ``name``: ``make_base_expert(env.env)`` steered around the column.

    Options: ``modes`` and ``seed`` of :class:`DetourExpert`.
    """
    if not isinstance(env, DetourEnv):
        raise LfmPolicyError(f"{name}: the expert needs the detour env (got {type(env).__name__})")
    return DetourExpert(env, make_base_expert(env.env), **options)
