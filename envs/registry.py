"""Task registry: names → environment factories, scripted experts and specs.

Task names are ``<family>/<task>``:

* ``toy/point-obstacle``, ``toy/point-two-obstacles`` — the multimodal 2-D toy tasks (numpy only).
* ``metaworld/<name>-v3`` — any of the 50 Meta-World v3 tasks (``metaworld==3.1.1``).
* ``robosuite/Lift``, ``robosuite/PickPlaceCan``, ``robosuite/NutAssemblySquare`` — robosuite tasks
  created through robomimic's env utilities.
* ``<task>-detour`` (:data:`DETOUR_TASKS`) — multimodal variants with a keep-out column to go around
  on the left or the right (:mod:`lfm_policy.envs.detour`).

Users can add their own tasks with :func:`register_task` (e.g. any gymnasium env wrapped by
:class:`lfm_policy.envs.adapter.GymAdapter` together with an expert).

Imports are lazy: listing tasks or making a toy task never imports mujoco, metaworld or robosuite;
the simulator modules load when such a task is made.

Every environment is a ``gymnasium.Env`` with a ``spaces.Dict`` observation space (low-dim keys are
float32 1-D arrays; camera keys end in ``_image`` and are uint8 (H, W, 3)), a Box action space,
``info["is_success"]`` on every step, a ``max_episode_steps`` attribute and a deterministic
``reset(seed=...)``. Experts have ``reset()`` (optionally ``reset(seed=...)``) and ``act(obs) -> action``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from lfm_policy.errors import LfmPolicyError

# The 50 Meta-World v3 task names (``metaworld.env_dict.ALL_V3_ENVIRONMENTS`` in metaworld 3.1.1).
# Kept here so that listing tasks does not import metaworld; tests check it against the package.
METAWORLD_V3_NAMES: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3",
    "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3",
    "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3",
    "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3",
    "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip
ROBOSUITE_NAMES: tuple[str, ...] = ("Lift", "PickPlaceCan", "NutAssemblySquare")

# Multimodal variants: name -> (base task, what the hand reaches first). Specs in lfm_policy.envs.detour.
DETOUR_TASKS: dict[str, tuple[str, str]] = {
    "metaworld/reach-v3-detour": ("metaworld/reach-v3", "goal"),
    "metaworld/button-press-topdown-v3-detour": ("metaworld/button-press-topdown-v3", "button"),
    "metaworld/faucet-open-v3-detour": ("metaworld/faucet-open-v3", "faucet handle"),
    "metaworld/window-close-v3-detour": ("metaworld/window-close-v3", "window handle"),
    "metaworld/coffee-button-v3-detour": ("metaworld/coffee-button-v3", "button"),
    "robosuite/Lift-detour": ("robosuite/Lift", "cube"),
    "robosuite/PickPlaceCan-detour": ("robosuite/PickPlaceCan", "can"),
}

_METAWORLD_MODULE = "lfm_policy.envs.metaworld_tasks"
_ROBOSUITE_MODULE = "lfm_policy.envs.robosuite_tasks"


class UnknownTaskError(LfmPolicyError, ValueError):
    """The task name is not registered; the message lists close matches."""


class Expert(Protocol):
    """A scripted expert: ``reset()`` at episode start, then ``act(obs) -> action`` every step."""

    def reset(self) -> None:
        """Start an episode (implementations may accept ``seed=`` to make their choices reproducible)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Return the action (float32 (Da,)) for the observation dict."""


def reset_expert(expert: Any, seed: int | None = None) -> None:
    """Call ``expert.reset``, passing ``seed`` when it is given and the expert accepts one."""
    if seed is not None and "seed" in inspect.signature(expert.reset).parameters:
        expert.reset(seed=seed)
    else:
        expert.reset()


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What is known about a task without running it.

    Attributes:
        name: Full task name, e.g. ``"toy/point-obstacle"``.
        family: ``"toy"``, ``"metaworld"``, ``"robosuite"`` or ``"custom"``.
        max_episode_steps: Episode length limit (None when it is only known once the env exists).
        description: One line for ``lfm-policy tasks``.
        obs_spec: ``{key: (shape, dtype_name)}`` when an env was created (else None).
        action_spec: ``{"shape": ..., "low": [...], "high": [...]}`` when an env was created.
        has_expert: Whether :func:`make_expert` works for this task.

    """

    name: str
    family: str
    max_episode_steps: int | None
    description: str
    obs_spec: dict[str, tuple[tuple[int, ...], str]] | None = None
    action_spec: dict[str, Any] | None = None
    has_expert: bool = True


@dataclasses.dataclass(frozen=True)
class _Entry:
    family: str
    description: str
    make_env: Callable[..., Any]  # (images: bool, seed: int | None, **kwargs) -> gym.Env
    make_expert: Callable[..., Expert] | None  # (env, **options) -> expert
    max_episode_steps: int | Callable[[], int] | None


_REGISTRY: dict[str, _Entry] = {}
_SPEC_CACHE: dict[tuple[str, bool], TaskSpec] = {}


def register_task(
    name: str,
    make_env: Callable[..., Any],
    make_expert: Callable[..., Expert] | None = None,
    *,
    max_episode_steps: int | Callable[[], int] | None = None,
    description: str = "",
    family: str = "custom",
    overwrite: bool = False,
) -> None:
    """Add a task to the registry.

    Args:
        name: ``"<family>/<task>"`` style name.
        make_env: ``make_env(images=bool, seed=int | None, **kwargs) -> gymnasium.Env``.
        make_expert: ``make_expert(env, **options) -> expert`` (None when the task has no scripted
            expert); options are what :func:`make_expert` passes on (e.g. ``modes``).
        max_episode_steps: Episode length limit (or a zero-argument callable returning it).
        description: One line shown by ``lfm-policy tasks``.
        family: Family shown by ``lfm-policy tasks``.
        overwrite: Replace an existing registration instead of raising.

    Raises:
        LfmPolicyError: When the name is taken (and ``overwrite`` is False) or malformed.

    """
    if "/" not in name or name.startswith("/") or name.endswith("/"):
        raise LfmPolicyError(f"task name {name!r} must look like '<family>/<task>'")
    if name in _REGISTRY and not overwrite:
        raise LfmPolicyError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = _Entry(family, description, make_env, make_expert, max_episode_steps)
    for key in [k for k in _SPEC_CACHE if k[0] == name]:
        del _SPEC_CACHE[key]


def list_tasks(family: str | None = None) -> list[str]:
    """Return the registered task names (in registration order), optionally of one family only."""
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def task_family(name: str) -> str:
    """Return the family of task ``name`` (cheap: loads no simulator)."""
    return _entry(name).family


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        if not close:  # e.g. "pick-place" → "metaworld/pick-place-v3"
            close = [n for n in _REGISTRY if name.lower() in n.lower()][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (`lfm-policy tasks` lists them all)") from None


def make_env(name: str, *, images: bool = False, seed: int | None = None, **kwargs: Any):
    """Create the environment of task ``name``.

    Args:
        name: Registered task name.
        images: Include camera observations (``*_image`` keys, uint8 (H, W, 3)).
        seed: Seed for the environment (episodes are still seeded through ``reset(seed=...)``).
        **kwargs: Task-specific options (e.g. ``camera``/``image_size`` for Meta-World).

    Returns:
        A ``gymnasium.Env`` following the conventions in the module docstring.

    """
    entry = _entry(name)
    try:
        env = entry.make_env(images=images, seed=seed, **kwargs)
    except TypeError as e:
        if not kwargs:
            raise
        raise LfmPolicyError(f"task {name!r}: cannot use option(s) {sorted(kwargs)}: {e}") from e
    if not kwargs and (name, images) not in _SPEC_CACHE:
        _SPEC_CACHE[(name, images)] = _spec_from_env(name, entry, env)
    return env


def make_expert(name: str, env: Any, **options: Any) -> Expert:
    """Create the scripted expert of task ``name`` for ``env`` (made by :func:`make_env`).

    Args:
        name: Registered task name.
        env: The task's environment.
        **options: Expert options, e.g. ``modes=("left",)`` for the experts of multimodal tasks
            (the strategies the expert may choose from); an expert that takes none raises.

    Raises:
        LfmPolicyError: The task has no expert, or its expert does not take ``options``.

    """
    entry = _entry(name)
    if entry.make_expert is None:
        raise LfmPolicyError(f"task {name!r} has no scripted expert")
    if not options:
        return entry.make_expert(env)
    try:
        return entry.make_expert(env, **options)
    except TypeError as e:
        raise LfmPolicyError(f"task {name!r}: its expert does not take option(s) {sorted(options)}: {e}") from e


def get_task_spec(name: str, *, images: bool = False, create: bool = False) -> TaskSpec:
    """Describe task ``name``.

    Obs/action specs are filled for toy tasks, for tasks already made in this process, and when
    ``create`` is True (which creates and closes an env, loading the simulator).

    Args:
        name: Registered task name.
        images: Whether the described observation includes camera images.
        create: Create an env (if needed) to fill ``obs_spec``/``action_spec``.

    """
    entry = _entry(name)
    cached = _SPEC_CACHE.get((name, images))
    if cached is not None:
        return cached
    if create or entry.family == "toy":
        env = make_env(name, images=images)
        env.close()
        return _SPEC_CACHE[(name, images)]
    return TaskSpec(name, entry.family, _max_steps(entry), entry.description, has_expert=entry.make_expert is not None)


def _max_steps(entry: _Entry) -> int | None:
    """Return the episode limit; None when it is unknown or the simulator module cannot load."""
    m = entry.max_episode_steps
    if not callable(m):
        return m
    try:
        return int(m())
    except (LfmPolicyError, ImportError, AttributeError, KeyError):
        return None  # the error surfaces, with its message, when the task's env is made


def _spec_from_env(name: str, entry: _Entry, env: Any) -> TaskSpec:
    obs_spec = {k: (tuple(int(d) for d in s.shape), str(np.dtype(s.dtype))) for k, s in env.observation_space.items()}
    act = env.action_space
    action_spec = {
        "shape": tuple(int(d) for d in act.shape),
        "low": np.asarray(act.low, float).round(6).tolist(),
        "high": np.asarray(act.high, float).round(6).tolist(),
    }
    max_steps = getattr(env, "max_episode_steps", None) or _max_steps(entry)
    return TaskSpec(
        name,
        entry.family,
        int(max_steps) if max_steps else None,
        entry.description,
        obs_spec,
        action_spec,
        has_expert=entry.make_expert is not None,
    )


# --------------------------------------------------------------------------------------------------
# Built-in tasks
# --------------------------------------------------------------------------------------------------
_TOY_TASKS: dict[str, tuple[dict[str, Any], str]] = {
    "toy/point-obstacle": (
        {"n_obstacles": 1, "obstacle_radius": 0.3, "max_episode_steps": 80},
        "2-D point reaches a goal around one obstacle; expert goes left or right (2 modes)",
    ),
    "toy/point-two-obstacles": (
        {"n_obstacles": 2, "obstacle_radius": 0.18, "max_episode_steps": 100},
        "2-D point passes two stacked obstacles on random sides (4 modes)",
    ),
}


def _make_toy_env(cfg_kwargs: dict[str, Any]) -> Callable[..., Any]:
    def make(*, images: bool = False, seed: int | None = None, image_size: int | None = None, **over: Any):
        from lfm_policy.envs.toy import PointObstacleConfig, PointObstacleEnv

        cfg = dict(cfg_kwargs, **over)
        if image_size is not None:
            cfg["image_size"] = image_size
        config = PointObstacleConfig.from_dict(cfg, where="toy task options")
        env = PointObstacleEnv(config, images=images, render_mode="rgb_array")
        if seed is not None:
            env.reset(seed=seed)
        return env

    return make


def _make_toy_expert(env: Any, **options: Any) -> Expert:
    from lfm_policy.envs.toy import PointObstacleExpert

    return PointObstacleExpert(env, **options)


def _family_attr(module: str, attr: str) -> Any:
    from lfm_policy.envs.robomimic_compat import setup_headless_gl

    setup_headless_gl()  # before the simulator module imports mujoco
    try:
        mod = importlib.import_module(module)
    except LfmPolicyError:
        raise
    except ModuleNotFoundError as e:
        raise LfmPolicyError(
            f"cannot load {module}: {e} (install the simulator extras: pip install 'lfm-policy[sim]')"
        ) from e
    except Exception as e:  # noqa: BLE001  (e.g. mujoco refusing a MUJOCO_GL value): one clear line
        raise LfmPolicyError(f"cannot load {module}: {type(e).__name__}: {e}") from e
    return getattr(mod, attr)


def _check_gl(images: bool) -> None:
    """With images, fail early and clearly when MuJoCo has no working OpenGL backend."""
    if not images:
        return
    from lfm_policy.envs.gl import require_gl

    require_gl()


def _make_metaworld_env(task: str) -> Callable[..., Any]:
    def make(*, images: bool = False, seed: int | None = None, **kwargs: Any):
        _check_gl(images)
        return _family_attr(_METAWORLD_MODULE, "make_metaworld_env")(task, images=images, seed=seed, **kwargs)

    return make


def _make_metaworld_expert(env: Any) -> Expert:
    return _family_attr(_METAWORLD_MODULE, "MetaWorldExpert")(env)


def _metaworld_max_steps() -> int:
    return int(_family_attr(_METAWORLD_MODULE, "METAWORLD_MAX_EPISODE_STEPS"))


def _make_robosuite_env(task: str) -> Callable[..., Any]:
    def make(*, images: bool = False, seed: int | None = None, **kwargs: Any):
        _check_gl(images)
        return _family_attr(_ROBOSUITE_MODULE, "make_robosuite_env")(task, images=images, seed=seed, **kwargs)

    return make


def _make_robosuite_expert(env: Any) -> Expert:
    return _family_attr(_ROBOSUITE_MODULE, "RobosuiteExpert")(env)


def _robosuite_max_steps(task: str) -> Callable[[], int]:
    return lambda: int(_family_attr(_ROBOSUITE_MODULE, "ROBOSUITE_MAX_EPISODE_STEPS")[task])


def _make_detour_env(name: str) -> Callable[..., Any]:
    base = _REGISTRY[DETOUR_TASKS[name][0]]

    def make(**kwargs: Any):
        from lfm_policy.envs.detour import make_detour_env

        return make_detour_env(name, base.make_env, **kwargs)

    return make


def _make_detour_expert(name: str) -> Callable[..., Expert]:
    base = _REGISTRY[DETOUR_TASKS[name][0]]

    def make(env: Any, **options: Any) -> Expert:
        from lfm_policy.envs.detour import make_detour_expert

        assert base.make_expert is not None
        return make_detour_expert(name, env, base.make_expert, **options)

    return make


def _register_builtin() -> None:
    for name, (cfg, desc) in _TOY_TASKS.items():
        register_task(name, _make_toy_env(cfg), _make_toy_expert, max_episode_steps=cfg["max_episode_steps"],
                      description=desc, family="toy")  # fmt: skip
    for task in METAWORLD_V3_NAMES:
        register_task(
            f"metaworld/{task}",
            _make_metaworld_env(task),
            _make_metaworld_expert,
            max_episode_steps=_metaworld_max_steps,
            description=f"Meta-World {task}: Sawyer arm, 39-d state, metaworld.policies expert",
            family="metaworld",
        )
    for task in ROBOSUITE_NAMES:
        register_task(
            f"robosuite/{task}",
            _make_robosuite_env(task),
            _make_robosuite_expert,
            max_episode_steps=_robosuite_max_steps(task),
            description=f"robosuite {task} (Panda, OSC_POSE 20 Hz, via robomimic env utils), scripted expert",
            family="robosuite",
        )
    for name, (base, what) in DETOUR_TASKS.items():
        family = name.split("/", 1)[0]
        register_task(
            name,
            _make_detour_env(name),
            _make_detour_expert(name),
            max_episode_steps=_REGISTRY[base].max_episode_steps,
            description=f"{base} with a keep-out column before the {what}: around it left or right (2 modes)",
            family=family,
        )


_register_builtin()
