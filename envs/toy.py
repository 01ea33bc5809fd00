"""A multimodal 2-D toy task without a simulator: a point robot reaches a goal around obstacles.

The arena is the square [-1, 1]². The agent starts near the bottom edge, the goal lies near the top
edge, and one or two disc obstacles sit on the straight line between them. The agent is velocity
controlled: ``pos += max_step * clip(action, -1, 1)``. Touching an obstacle ends the episode as a
failure, reaching the goal (within ``goal_tolerance``) ends it as a success.

The scripted expert passes each obstacle on the left or on the right, chosen 50/50 by its own seeded
random generator; both ways are equally good. Averaging the two ways (what a regression policy
trained with MSE learns) drives straight into the obstacle, so this is the task where a generative
action head has to beat regression. ``info["mode"]`` reports which way the episode went ("left" or
"right"; "left-right" etc. with two obstacles) once the agent has passed every obstacle, so an
evaluation can measure mode coverage.

Observations (``spaces.Dict``):
    agent_pos: float32 (2,) agent position (x, y).
    goal_pos: float32 (2,) goal position.
    obstacles: float32 (3 * n_obstacles,) (x, y, radius) of each obstacle, bottom to top.
    top_image: uint8 (S, S, 3), only with ``images=True``: top-down view, upright (row 0 is y = +1).

Action: float32 (2,) in [-1, 1], the velocity as a fraction of ``max_step`` per step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lfm_policy.config import Config, check
from lfm_policy.errors import LfmPolicyError

_BACKGROUND = np.array([235, 235, 235], np.uint8)
_OBSTACLE_RGB = np.array([80, 80, 80], np.uint8)
_GOAL_RGB = np.array([40, 170, 70], np.uint8)
_AGENT_RGB = np.array([30, 90, 220], np.uint8)
_AGENT_DRAW_RADIUS = 0.05
_GOAL_DRAW_RADIUS = 0.06


@dataclasses.dataclass
class PointObstacleConfig(Config):
    """Geometry and dynamics of :class:`PointObstacleEnv`.

    Attributes:
        n_obstacles: 1 (two modes: left/right) or 2 (four modes), stacked between start and goal.
        obstacle_radius: Nominal obstacle radius; each episode scales it by U(0.9, 1.1).
        obstacle_y: Height of the obstacle's centre (one obstacle). It sits close to the start so that
            the first executed action chunk (8 steps) already has to pick a side: a policy that
            averages the two ways drives into it before it can replan.
        max_step: Distance moved per step at full action (the action is clipped to [-1, 1]).
        goal_tolerance: Success when the agent is this close to the goal.
        max_episode_steps: Episodes are truncated after this many steps.
        image_size: Side of the square ``top_image`` in pixels.
        start_jitter: Half-width of the uniform x range of start and goal positions.

    """

    n_obstacles: int = 1
    obstacle_radius: float = 0.3
    obstacle_y: float = -0.35
    max_step: float = 0.05
    goal_tolerance: float = 0.05
    max_episode_steps: int = 80
    image_size: int = 64
    start_jitter: float = 0.2

    def __post_init__(self) -> None:
        check(self.n_obstacles in (1, 2), "n_obstacles", f"must be 1 or 2, got {self.n_obstacles}")
        check(0.05 <= self.obstacle_radius <= 0.4, "obstacle_radius", "must lie in [0.05, 0.4]")
        check(-0.4 <= self.obstacle_y <= 0.4, "obstacle_y", "must lie in [-0.4, 0.4]")
        if self.n_obstacles == 2:
            check(self.obstacle_radius <= 0.22, "obstacle_radius", "must be <= 0.22 with two obstacles")
        check(0 < self.max_step <= 0.2, "max_step", "must lie in (0, 0.2]")
        check(0 < self.goal_tolerance < 0.5, "goal_tolerance", "must lie in (0, 0.5)")
        check(self.max_episode_steps > 0, "max_episode_steps", "must be positive")
        check(8 <= self.image_size <= 512, "image_size", "must lie in [8, 512]")
        check(0 <= self.start_jitter <= 0.5, "start_jitter", "must lie in [0, 0.5]")


def _segment_hits_disc(p0: np.ndarray, p1: np.ndarray, centre: np.ndarray, radius: float) -> bool:
    """Whether the segment p0→p1 passes within ``radius`` of ``centre`` (all (2,) arrays)."""
    d = p1 - p0
    denom = float(d @ d)
    t = 0.0 if denom == 0.0 else float(np.clip((centre - p0) @ d / denom, 0.0, 1.0))
    closest = p0 + t * d
    return float(np.sum((closest - centre) ** 2)) < radius * radius


class PointObstacleEnv(gym.Env):
    """2-D point robot that must go around one or two obstacles to reach a goal (see module doc).

    Args:
        config: Geometry and dynamics.
        images: Add the ``top_image`` camera observation.
        render_mode: ``"rgb_array"`` to make :meth:`render` return the top-down image.

    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        config: PointObstacleConfig | None = None,
        *,
        images: bool = False,
        render_mode: str | None = None,
    ) -> None:
        self.config = config or PointObstacleConfig()
        self.images = images
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.max_episode_steps = self.config.max_episode_steps
        n, size = self.config.n_obstacles, self.config.image_size
        obs_spaces: dict[str, spaces.Space] = {
            "agent_pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "goal_pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "obstacles": spaces.Box(-1.0, 1.0, (3 * n,), np.float32),
        }
        if images:
            obs_spaces["top_image"] = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        self._grid_x = centres[None, :]  # (1, S): x of each column
        self._grid_y = centres[::-1, None]  # (S, 1): y of each row, row 0 at the top
        self._pos = np.zeros(2)
        self._goal = np.zeros(2)
        self._obstacles = np.zeros((n, 3))
        self._background: np.ndarray | None = None
        self._sides: list[str | None] = [None] * n
        self._steps = 0
        self._done = True

    # ----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Sample start, goal and obstacles from the env's seeded generator; returns (obs, info)."""
        super().reset(seed=seed)
        cfg, rng = self.config, self.np_random
        jit = cfg.start_jitter
        self._pos = np.array([rng.uniform(-jit, jit), rng.uniform(-0.9, -0.8)])
        self._goal = np.array([rng.uniform(-jit, jit), rng.uniform(0.8, 0.9)])
        ys = [cfg.obstacle_y] if cfg.n_obstacles == 1 else [-0.35, 0.35]
        self._obstacles = np.array(
            [
                [
                    rng.uniform(-0.05, 0.05),
                    y + rng.uniform(-0.05, 0.05),
                    cfg.obstacle_radius * rng.uniform(0.9, 1.1),
                ]
                for y in ys
            ]
        )
        self._sides = [None] * cfg.n_obstacles
        self._steps = 0
        self._done = False
        self._background = None
        return self._obs(), self._info(success=False, collision=False)

    def step(self, action: np.ndarray):
        """Move by ``max_step * clip(action, -1, 1)``; returns (obs, reward, terminated, truncated, info)."""
        if self._done:
            raise RuntimeError("PointObstacleEnv.step called after the episode ended; call reset() first")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        old = self._pos
        new = np.clip(old + self.config.max_step * a, -1.0, 1.0)
        collision = any(_segment_hits_disc(old, new, o[:2], o[2]) for o in self._obstacles)
        for k, (ox, oy, _) in enumerate(self._obstacles):
            if self._sides[k] is None and not collision and old[1] < oy <= new[1]:
                # x where the path crosses the obstacle's centre line
                frac = (oy - old[1]) / (new[1] - old[1])
                self._sides[k] = "left" if old[0] + frac * (new[0] - old[0]) < ox else "right"
        self._pos = new
        self._steps += 1
        success = not collision and float(np.linalg.norm(new - self._goal)) < self.config.goal_tolerance
        terminated = collision or success
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._done = terminated or truncated
        return self._obs(), float(success), terminated, truncated, self._info(success, collision)

    def render(self) -> np.ndarray | None:
        """Top-down uint8 (S, S, 3) image when ``render_mode == "rgb_array"``, else None."""
        return self._image() if self.render_mode == "rgb_array" else None

    # ----------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str | None:
        """Which way the agent passed the obstacles (e.g. "left", "right-left"), None until all passed."""
        if any(s is None for s in self._sides):
            return None
        return "-".join(self._sides)  # type: ignore[arg-type]

    def get_state(self) -> np.ndarray:
        """Flat float64 state: agent (2), goal (2), obstacles (3 n), step count (1)."""
        return np.concatenate([self._pos, self._goal, self._obstacles.ravel(), [self._steps]])

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {
            "agent_pos": self._pos.astype(np.float32),
            "goal_pos": self._goal.astype(np.float32),
            "obstacles": self._obstacles.ravel().astype(np.float32),
        }
        if self.images:
            obs["top_image"] = self._image()
        return obs

    def _info(self, success: bool, collision: bool) -> dict[str, Any]:
        return {"is_success": bool(success), "collision": bool(collision), "mode": self.mode}

    def _coverage(self, centre: np.ndarray, radius: float) -> np.ndarray:
        """Float (S, S) fraction of each pixel the disc covers, anti-aliased over one pixel.

        The edge ramps linearly over one pixel width around the exact radius, so a disc smaller than a
        pixel still moves the image when it moves by a fraction of a pixel (as a camera's pixels
        integrate light): at low resolution its position stays readable below the pixel size.
        """
        pixel = 2.0 / self.config.image_size
        dist = np.sqrt((self._grid_x - centre[0]) ** 2 + (self._grid_y - centre[1]) ** 2)  # (S, S)
        return np.clip((radius - dist) / pixel + 0.5, 0.0, 1.0)

    @staticmethod
    def _paint(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
        """Blend colour ``rgb`` into float ``img`` (S, S, 3) with per-pixel weights ``alpha`` (S, S)."""
        img += alpha[..., None] * (rgb.astype(np.float32) - img)

    def _image(self) -> np.ndarray:
        """Render the scene: uint8 (S, S, 3), upright (row 0 is the top of the arena), anti-aliased."""
        size = self.config.image_size
        if self._background is None:
            bg = np.broadcast_to(_BACKGROUND.astype(np.float32), (size, size, 3)).copy()
            for ox, oy, r in self._obstacles:
                self._paint(bg, self._coverage(np.array([ox, oy]), r), _OBSTACLE_RGB)
            self._background = bg
        img = self._background.copy()
        self._paint(img, self._coverage(self._goal, _GOAL_DRAW_RADIUS), _GOAL_RGB)
        self._paint(img, self._coverage(self._pos, _AGENT_DRAW_RADIUS), _AGENT_RGB)
        return np.rint(img).astype(np.uint8)


class PointObstacleExpert:
    """Scripted expert for :class:`PointObstacleEnv`: passes each obstacle on a random side.

    The side of each obstacle is drawn 50/50 at :meth:`reset` from the expert's own generator
    (independent of the env's), then the expert steers straight at a waypoint beside each obstacle in
    turn (an entry point below and an exit point above each obstacle's centre line, ``margin`` beyond its
    edge) and finally at the goal. It reads only the observation.

    Args:
        env: The environment (only its config is read: ``max_step``).
        seed: Seed of the expert's generator; :meth:`reset` can reseed it per episode.
        margin: Clearance kept between the path's waypoints and each obstacle's edge.
        modes: The modes the expert may choose from (uniformly), e.g. ``("left",)`` for one-sided
            demonstrations; None (default) draws every side 50/50 (all modes).

    Raises:
        LfmPolicyError: ``modes`` names a mode the task does not have (the message lists them).

    """

    def __init__(self, env: gym.Env, seed: int | None = None, margin: float = 0.12,
                 modes: tuple[str, ...] | list[str] | None = None) -> None:
        self._max_step = env.unwrapped.config.max_step
        self._n = env.unwrapped.config.n_obstacles
        self.margin = margin
        self.modes = self._check_modes(modes, self._n)
        self._rng = self._make_rng(seed)
        self.sides: np.ndarray = np.ones(self._n)
        self._waypoints: list[np.ndarray] | None = None
        self._target = 0

    @staticmethod
    def all_modes(n_obstacles: int) -> list[str]:
        """Every mode of a task with ``n_obstacles`` obstacles, e.g. ``["left", "right"]``."""
        modes = [""]
        for _ in range(n_obstacles):
            modes = [f"{m}-{side}" if m else side for m in modes for side in ("left", "right")]
        return modes

    @classmethod
    def _check_modes(cls, modes: tuple[str, ...] | list[str] | None, n: int) -> tuple[str, ...] | None:
        if modes is None:
            return None
        known = cls.all_modes(n)
        bad = [m for m in modes if m not in known]
        if bad or not modes:
            raise LfmPolicyError(f"toy expert: unknown mode(s) {bad or list(modes)}; this task has {known}")
        return tuple(dict.fromkeys(modes))

    @staticmethod
    def _make_rng(seed: int | None) -> np.random.Generator:
        # spawn_key keeps this stream independent of the env's np_random for the same seed
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xE4,)))

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: reseed (if ``seed`` is given) and draw the side of each obstacle."""
        if seed is not None:
            self._rng = self._make_rng(seed)
        if self.modes is None:
            self.sides = self._rng.choice([-1.0, 1.0], size=self._n)
        else:
            mode = self.modes[int(self._rng.integers(len(self.modes)))]
            self.sides = np.array([-1.0 if side == "left" else 1.0 for side in mode.split("-")])
        self._waypoints = None
        self._target = 0

    @property
    def mode(self) -> str:
        """The way this episode's plan passes the obstacles, in the env's ``info["mode"]`` format."""
        return "-".join("left" if s < 0 else "right" for s in self.sides)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Return the action, float32 (2,) with norm <= 1, towards the current waypoint."""
        pos = np.asarray(obs["agent_pos"], np.float64)
        if self._waypoints is None:
            obstacles = np.asarray(obs["obstacles"], np.float64).reshape(-1, 3)
            self._waypoints = [
                np.array([ox + side * (r + self.margin), oy + dy * r])
                for (ox, oy, r), side in zip(obstacles, self.sides)
                for dy in (-0.6, 0.6)
            ]
            self._waypoints.append(np.asarray(obs["goal_pos"], np.float64))
        last = len(self._waypoints) - 1
        while self._target < last and (
            np.linalg.norm(self._waypoints[self._target] - pos) < self._max_step
            or pos[1] >= self._waypoints[self._target][1]
        ):
            self._target += 1
        delta = (self._waypoints[self._target] - pos) / self._max_step
        norm = float(np.linalg.norm(delta))
        if norm > 1.0:
            delta /= norm
        return delta.astype(np.float32)
