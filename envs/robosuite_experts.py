"""Scripted waypoint experts for the robosuite tasks (Lift, PickPlaceCan, NutAssemblySquare).

An expert runs a plan: a list of :class:`Phase` objects, each a waypoint for the end effector (a
position, an optional gripper yaw, the gripper command) recomputed every step from the live scene, so
the expert reacts to where objects really are. A phase ends once the end effector is within its
tolerance (and at least ``min_steps`` passed), or after ``max_steps``. Control is proportional:

* translation: ``clip(12 * (target - eef_pos), -1, 1)`` (OSC_POSE: 0.05 m per unit);
* rotation: ``clip(2 * axis_angle(R_target R_eef^T), -1, 1)`` (0.5 rad per unit), with
  ``R_target`` the gripper pointing straight down at the phase's yaw, so drift in roll and pitch
  is corrected as well;
* gripper: -1 open, +1 close.

Plans (the success conditions are robosuite's ``_check_success``):

* Lift: above the cube (yaw aligned with a cube face) → down → close → lift 25 cm above the table.
* PickPlaceCan: above the can → down → close → rise to the carry height → over the can's target in
  its bin → lower → open → move up (success needs the gripper more than ~4 cm away from the can).
* NutAssemblySquare: above the nut handle (1 cm beyond its site, clear of the ring) with the gripper
  yaw along the handle → down → close → lift above the peg while turning the nut's yaw to a
  multiple of 90 degrees (the peg is square, the clearance is ~7 mm per side) that keeps the handle
  within the Panda's reach and the wrist within its joint range → centre the nut over the peg →
  lower, re-centring on the way → open → move up.

The experts read the objects' and targets' poses from the simulator (privileged information): they
are demonstrators, not policies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from lfm_policy.errors import LfmPolicyError

POS_GAIN = 12.0
ROT_GAIN = 2.0
_HALF_PI = np.pi / 2


def _wrap(angle: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion in robosuite's (x, y, z, w) order."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotvec(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of a rotation matrix (angle in [0, pi])."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-8:  # angle ~ pi: take the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        norm = np.linalg.norm(axis)
    return axis / norm * angle


def _yaw(r: np.ndarray) -> float:
    """Heading of the frame's x axis in the world xy plane."""
    return float(np.arctan2(r[1, 0], r[0, 0]))


def _down_at_yaw(yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down (z = -world z) with its x axis at ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def _closest_equivalent(angle: float, reference: float, period: float) -> float:
    """The angle equal to ``angle`` modulo ``period`` that is closest to ``reference``."""
    return reference + float(np.remainder(angle - reference + period / 2, period) - period / 2)


YAW_RANGE = (np.radians(-80.0), np.radians(190.0))
"""Gripper yaws (rad) the Panda's wrist reaches while pointing down from its robosuite start pose
(joint 7 hits its limit near -95° and +210°). Yaws are unwrapped into this range."""

_MAX_YAW_STEP = np.pi / 4


def _unwrapped_yaw(r: np.ndarray) -> float:
    """Gripper yaw mapped into ``[YAW_RANGE[0] - 20°, YAW_RANGE[0] + 340°)`` (no jump inside the range)."""
    lo = YAW_RANGE[0] - np.radians(20.0)
    return float(lo + np.remainder(_yaw(r) - lo, 2 * np.pi))


@dataclasses.dataclass
class Phase:
    """One waypoint of a plan (callables are evaluated on the live scene every step).

    Attributes:
        name: For logs and tests.
        target: Returns the end-effector target position, float (3,).
        gripper: -1 open, +1 close.
        yaw: Returns the gripper yaw target (rad); None keeps the previous phase's yaw target.
        tol: The phase may end once ``error()`` (default: distance to the target) is below this.
        yaw_tol: ... and the yaw error is below this (rad).
        min_steps: The phase lasts at least this many steps.
        max_steps: The phase ends after this many steps regardless.
        error: Optional custom error (e.g. distance of an object to its goal) compared with ``tol``.

    """

    name: str
    target: Callable[[], np.ndarray]
    gripper: float
    yaw: Callable[[], float] | None = None
    tol: float = 0.01
    yaw_tol: float = 0.08
    min_steps: int = 0
    max_steps: int = 60
    error: Callable[[], float] | None = None


class _Latch:
    """Evaluates ``fn`` on the first call and returns that value afterwards (e.g. "where the phase began")."""

    def __init__(self, fn: Callable[[], np.ndarray]) -> None:
        self._fn = fn
        self._value: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self._value is None:
            self._value = np.array(self._fn(), dtype=np.float64)
        return self._value


class _Scene:
    """Live view of the end effector and task objects for the plans."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.rs = env.robosuite_env
        self.obs: dict[str, np.ndarray] = {}

    def update(self, obs: dict[str, np.ndarray]) -> None:
        self.obs = obs

    @property
    def eef(self) -> np.ndarray:
        return np.asarray(self.obs["robot0_eef_pos"], dtype=np.float64)

    @property
    def eef_rot(self) -> np.ndarray:
        return _quat_xyzw_to_mat(self.obs["robot0_eef_quat"])

    @property
    def obj_pos(self) -> np.ndarray:
        return np.asarray(self.obs["object"][:3], dtype=np.float64)

    @property
    def obj_yaw(self) -> float:
        return _yaw(_quat_xyzw_to_mat(self.obs["object"][3:7]))

    def site_pos(self, name: str) -> np.ndarray:
        sim = self.rs.sim
        return np.array(sim.data.site_xpos[sim.model.site_name2id(name)], dtype=np.float64)

    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.rs.sim.data.body_xpos[body_id], dtype=np.float64)


def _lift_plan(s: _Scene) -> list[Phase]:
    table_z = float(s.rs.table_offset[2])

    def cube_face_yaw() -> float:  # the gripper closes across a pair of cube faces
        return _closest_equivalent(s.obj_yaw, _unwrapped_yaw(s.eef_rot), _HALF_PI)

    return [
        Phase("above", lambda: s.obj_pos + [0, 0, 0.08], -1, yaw=cube_face_yaw, tol=0.015, max_steps=60),
        Phase("down", lambda: s.obj_pos + [0, 0, -0.005], -1, tol=0.008, max_steps=40),
        Phase("close", lambda: s.obj_pos + [0, 0, -0.005], 1, tol=0.0, min_steps=10, max_steps=10),
        Phase("lift", lambda: np.r_[s.obj_pos[:2], table_z + 0.25], 1, tol=0.02, max_steps=80),
    ]


def _can_plan(s: _Scene) -> list[Phase]:
    rs = s.rs
    # Drop point: inside the can's success region (a quarter of bin 2, 19.5 x 24.5 cm), 4 cm from its
    # corner nearest to the robot: the region's centre is at the edge of the Panda's reach.
    centre = np.array(rs.target_bin_placements[rs.object_id], dtype=np.float64)[:2]
    goal = centre - np.array(rs.bin_size[:2]) / 4 + 0.04
    bin_z = float(rs.bin2_pos[2])
    carry_z = bin_z + 0.2

    grasp_xy = _Latch(lambda: s.eef[:2])

    def straight_yaw() -> float:
        return 0.0

    return [
        Phase("above", lambda: s.obj_pos + [0, 0, 0.08], -1, yaw=straight_yaw, tol=0.015, max_steps=60),
        Phase("down", lambda: s.obj_pos + [0, 0, 0.01], -1, tol=0.01, max_steps=40),
        Phase("close", lambda: s.obj_pos + [0, 0, 0.01], 1, tol=0.0, min_steps=10, max_steps=10),
        Phase("rise", lambda: np.r_[grasp_xy(), carry_z], 1, tol=0.03, max_steps=60),
        Phase("carry", lambda: np.r_[goal, carry_z], 1, tol=0.02, max_steps=100),
        Phase("lower", lambda: np.r_[goal, bin_z + 0.12], 1, tol=0.015, max_steps=60),
        Phase("open", lambda: np.r_[goal, bin_z + 0.12], -1, tol=0.0, min_steps=6, max_steps=6),
        Phase("retreat", lambda: np.r_[goal, bin_z + 0.3], -1, tol=0.01, max_steps=60),
    ]


def _square_plan(s: _Scene) -> list[Phase]:
    rs = s.rs
    nut = rs.nuts[rs.nut_id]
    handle_site = nut.important_sites["handle"]
    peg = s.body_pos(rs.peg1_body_id)
    table_z = float(rs.table_offset[2])
    carry_z = table_z + 0.2  # peg top is 0.13 above the table; the nut hangs ~1 cm below the grasp
    grasp_yaw0, nut_yaw_goal = _square_yaw_plan(s.obj_yaw, _unwrapped_yaw(s.eef_rot))

    def grasp_point() -> np.ndarray:  # 1 cm beyond the handle site, away from the ring
        handle = s.site_pos(handle_site)
        out = handle[:2] - s.obj_pos[:2]
        return handle + np.r_[0.01 * out / max(float(np.linalg.norm(out)), 1e-6), 0.0]

    def grasp_yaw() -> float:  # fingers close across the handle: gripper x along the nut's x
        return _closest_equivalent(s.obj_yaw, grasp_yaw0, np.pi)

    def square_yaw() -> float:  # turn the gripper until the nut's yaw reaches its goal (k * 90°)
        return _unwrapped_yaw(s.eef_rot) + _wrap(nut_yaw_goal - s.obj_yaw)

    def over_peg(z: float) -> Callable[[], np.ndarray]:
        return lambda: np.r_[s.eef[:2] + (peg[:2] - s.obj_pos[:2]), z]

    def nut_xy_error() -> float:
        return float(np.linalg.norm(peg[:2] - s.obj_pos[:2]))

    grasp_xy = _Latch(lambda: s.eef[:2])
    release_pos = _Latch(lambda: s.eef)

    return [
        Phase("above", lambda: grasp_point() + [0, 0, 0.08], -1, yaw=grasp_yaw, tol=0.008, yaw_tol=0.04, max_steps=100),
        Phase("down", lambda: grasp_point() + [0, 0, -0.005], -1, tol=0.008, max_steps=40),
        Phase("close", lambda: grasp_point() + [0, 0, -0.005], 1, tol=0.0, min_steps=12, max_steps=12),
        Phase("lift", lambda: np.r_[grasp_xy(), carry_z], 1, yaw=square_yaw, tol=0.02, max_steps=60),
        Phase(
            "over-peg", over_peg(carry_z), 1, yaw=square_yaw, tol=0.003, yaw_tol=0.03, max_steps=120, error=nut_xy_error
        ),
        Phase("lower", over_peg(table_z + 0.035), 1, yaw=square_yaw, tol=0.01, max_steps=80),
        Phase("open", release_pos, -1, tol=0.0, min_steps=6, max_steps=6),
        Phase("retreat", lambda: np.r_[release_pos()[:2], table_z + 0.25], -1, tol=0.01, max_steps=60),
    ]


def _square_yaw_plan(nut_yaw: float, gripper_yaw: float) -> tuple[float, float]:
    """Choose the grasp yaw and the nut's goal yaw for NutAssemblySquare.

    The nut's goal yaw is a multiple of 90° (the peg is square) with the handle not pointing away from
    the robot (+x): over the peg the gripper holds the handle, and 5 cm further out is beyond the
    Panda's reach. The gripper grasps at the nut's yaw (mod 180°) and turns with the nut; both the
    grasp yaw and the final yaw must stay in the wrist's range, and the total turn is minimised.

    Returns:
        ``(grasp_yaw, nut_goal_yaw)`` in radians; grasp_yaw is unwrapped (see :data:`YAW_RANGE`).

    """
    best: tuple[float, float, float] | None = None
    for goal in (np.pi / 2, np.pi, -np.pi / 2):
        turn = _wrap(goal - nut_yaw)
        for k in range(-2, 3):
            grasp = nut_yaw + k * np.pi
            lo, hi = YAW_RANGE
            if not (lo <= grasp <= hi and lo <= grasp + turn <= hi):
                continue
            cost = abs(grasp - gripper_yaw) + abs(turn)
            if best is None or cost < best[0]:
                best = (cost, grasp, goal)
    if best is None:  # cannot happen for YAW_RANGE wider than 270°; keep the nut's yaw as a fallback
        return _closest_equivalent(nut_yaw, gripper_yaw, np.pi), _closest_equivalent(0.0, nut_yaw, _HALF_PI)
    return best[1], best[2]


_PLANS: dict[str, Callable[[_Scene], list[Phase]]] = {
    "Lift": _lift_plan,
    "PickPlaceCan": _can_plan,
    "NutAssemblySquare": _square_plan,
}


class RobosuiteExpert:
    """Scripted waypoint expert for a :class:`~lfm_policy.envs.robosuite_tasks.RobosuiteEnv`.

    Args:
        env: The env the expert acts in (its simulator is read for object and target poses).

    Attributes:
        phase_name: Name of the current phase (None before the first ``act``).

    """

    def __init__(self, env: Any) -> None:
        task = getattr(env, "task_name", None)
        if task not in _PLANS:
            raise LfmPolicyError(f"no scripted robosuite expert for task {task!r}; known: {', '.join(_PLANS)}")
        self.env = env
        self._make_plan = _PLANS[task]
        self._scene: _Scene | None = None
        self._phases: list[Phase] = []
        self._index = 0
        self._phase_steps = 0
        self._yaw_target = 0.0

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (the plan is built from the scene at the first ``act``; ``seed`` unused)."""
        self._scene = None

    @property
    def phase_name(self) -> str | None:
        """Name of the current phase (the last one once the plan is done)."""
        if self._scene is None:
            return None
        return self._phases[min(self._index, len(self._phases) - 1)].name

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Return the float32 (7,) OSC_POSE action for the observation (low-dim keys are used)."""
        if self._scene is None:
            self._scene = _Scene(self.env)
            self._scene.update(obs)
            self._phases = self._make_plan(self._scene)
            self._index = 0
            self._phase_steps = 0
            self._yaw_target = _unwrapped_yaw(self._scene.eef_rot)
        scene = self._scene
        scene.update(obs)
        phase = self._advance(scene)
        if phase.yaw is not None:
            self._yaw_target = phase.yaw()
        target = phase.target()
        action = np.zeros(7)
        action[:3] = np.clip(POS_GAIN * (target - scene.eef), -1.0, 1.0)
        yaw = _unwrapped_yaw(scene.eef_rot)  # turn at most 45° at a time: no ambiguous half turns
        yaw_goal = yaw + float(np.clip(self._yaw_target - yaw, -_MAX_YAW_STEP, _MAX_YAW_STEP))
        rot_err = _rotvec(_down_at_yaw(yaw_goal) @ scene.eef_rot.T)
        action[3:6] = np.clip(ROT_GAIN * rot_err, -1.0, 1.0)
        action[6] = phase.gripper
        self._phase_steps += 1
        return action.astype(np.float32)

    def _advance(self, scene: _Scene) -> Phase:
        """Move to the next phase while the current one is finished; return the active phase."""
        while self._index < len(self._phases) - 1:
            phase = self._phases[self._index]
            if self._phase_steps < phase.min_steps:
                break
            if self._phase_steps < phase.max_steps:
                err = phase.error() if phase.error is not None else float(np.linalg.norm(phase.target() - scene.eef))
                yaw_target = phase.yaw() if phase.yaw is not None else self._yaw_target
                yaw_err = abs(yaw_target - _unwrapped_yaw(scene.eef_rot))
                if err > phase.tol or yaw_err > phase.yaw_tol:
                    break
            self._index += 1
            self._phase_steps = 0
            next_phase = self._phases[self._index]
            if next_phase.yaw is not None:
                self._yaw_target = next_phase.yaw()
        return self._phases[self._index]
