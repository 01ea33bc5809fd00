"""``ControlLoop``: a chunked policy driving a robot at a fixed rate, with latency hiding.

The robot is anything with ``get_observation() -> {key: array}`` and ``send_action(action)``;
optionally ``done() -> bool`` (the loop stops when it returns True) and ``hold()`` (called when the
loop stops the robot; otherwise the hold action is sent once more). The policy is a
:class:`lfm_policy.Policy` (wrapped in a :class:`~lfm_policy.runtime.interface.LocalPredictor`) or any
:class:`~lfm_policy.runtime.interface.ChunkPredictor`, e.g. a
:class:`~lfm_policy.runtime.client.PolicyClient` talking to ``lfm-policy serve``.

Every tick (period 1/``rate_hz``, on a fixed grid; a late tick is counted, never caught up in a burst):

1. read the observation and push it into the history of To frames (the first is repeated at start);
2. pick up a chunk whose background inference has finished: it joins the schedule with the delay d
   it actually had, in ticks (= actions consumed meanwhile), so its first d actions are skipped
   (:class:`~lfm_policy.runtime.joining.ChunkSchedule`);
3. launch the next inference when the current chunk has ``execute_steps − lead`` actions consumed,
   lead = the largest delay of the last chunks (``prefetch``); without prefetch, when it has
   ``execute_steps`` consumed, synchronously (d = 0: the same actions as ``lfm-policy eval``);
4. send the schedule's action for this tick, clamped to the policy's action limits (``clamp``).

An overrun is a tick at which the current chunk has used its ``execute_steps`` and the next chunk has
not arrived: ``on_overrun="continue"`` keeps executing the current chunk's remaining plan (then holds),
``"hold"`` repeats the hold action (``hold_action``, default: the last action sent), ``"stop"`` stops.
An exception in the robot interface or the policy, or a non-finite action, stops the robot (hold) and
ends the run with ``stop_reason`` saying why.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lfm_policy.config import Config, check
from lfm_policy.runtime.interface import DEFAULT_LIMIT_MARGIN, ChunkPredictor, LocalPredictor, latency_stats
from lfm_policy.runtime.joining import JOIN_MODES, ChunkSchedule, prefix_weights

OVERRUN_POLICIES = ("continue", "hold", "stop")


@dataclass
class LoopConfig(Config):
    """How the loop runs.

    Attributes:
        rate_hz: Control rate.
        prefetch: Compute the next chunk in a background thread before the current one runs out.
        execute_steps: Actions of each chunk executed before the next one takes over (None: the
            policy's n_action_steps).
        join: Chunk boundary: ``none``, ``crossfade``, ``ensemble`` or ``inpaint`` (flow heads).
        crossfade_steps: Ticks of the cross-fade.
        ensemble_decay: m of the temporal-ensembling weights exp(−m·i).
        inpaint_guidance: Scale of the inpainting guidance step (see :mod:`lfm_policy.runtime.inpaint`).
        on_overrun: ``continue``, ``hold`` or ``stop`` (module docstring).
        hold_action: Action sent while holding (None: repeat the last action sent).
        clamp: Clamp actions to the policy's limits (training range widened by ``limit_margin``).
        limit_margin: Fraction of the training range added on each side of the limits.
        delay_window: Chunks whose measured delays set the launch lead.
        record_actions: Keep every sent action in the report (smoothness metrics).
        budget_ms: Chunk latency budget: with a local policy (and no ``solver`` given) the loop samples with
            the most accurate solver setting whose p95 latency fits (:func:`~lfm_policy.runtime.bench.
            choose_solver`, the rule of ``lfm-policy bench --budget-ms``); the choice is ``loop.solver_choice``.

    """

    rate_hz: float = 10.0
    prefetch: bool = True
    execute_steps: int | None = None
    join: str = "none"
    crossfade_steps: int = 3
    ensemble_decay: float = 0.01
    inpaint_guidance: float = 1.0
    on_overrun: str = "continue"
    hold_action: tuple[float, ...] | None = None
    clamp: bool = True
    limit_margin: float = DEFAULT_LIMIT_MARGIN
    delay_window: int = 5
    record_actions: bool = True
    budget_ms: float | None = None

    def __post_init__(self) -> None:
        check(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")
        check(self.execute_steps is None or self.execute_steps >= 1, "execute_steps", "must be ≥ 1")
        check(self.join in JOIN_MODES, "join", f"choose from {JOIN_MODES}, got {self.join!r}")
        check(self.crossfade_steps >= 1, "crossfade_steps", "must be ≥ 1")
        check(self.ensemble_decay >= 0, "ensemble_decay", "must be ≥ 0")
        check(self.on_overrun in OVERRUN_POLICIES, "on_overrun", f"choose from {OVERRUN_POLICIES}")
        check(self.limit_margin >= 0, "limit_margin", "must be ≥ 0")
        check(self.delay_window >= 1, "delay_window", "must be ≥ 1")
        check(self.budget_ms is None or self.budget_ms > 0, "budget_ms", "must be > 0")
        if self.hold_action is not None:
            self.hold_action = tuple(float(a) for a in self.hold_action)


@dataclass
class LoopReport:
    """What one :meth:`ControlLoop.run` did.

    Attributes:
        steps: Ticks run (actions sent).
        wall_s: Wall time of the run.
        stop_reason: ``done``, ``max_steps``, ``duration``, ``overrun``, ``interrupted`` or an error text.
        chunks: Chunks predicted.
        overruns: Ticks at which the next chunk was due but had not arrived.
        late_ticks: Ticks that started more than a period late.
        clamped: Actions changed by the limits.
        jitter_ms: Tick start minus its scheduled time: p50/p95/max/mean.
        inference_ms: Wall time of each chunk's inference (encode + sample, or the round trip).
        delays: Per chunk, the ticks between its observation and its first executed action.
        arrivals: Per chunk, the tick from which it was executed.
        actions: Sent actions (T, Da) when recorded.
        extra: What the robot reports (e.g. ``is_success`` of a simulated robot).

    """

    steps: int = 0
    wall_s: float = 0.0
    stop_reason: str = ""
    chunks: int = 0
    overruns: int = 0
    late_ticks: int = 0
    clamped: int = 0
    jitter_ms: dict[str, float | None] = field(default_factory=dict)
    inference_ms: dict[str, float | None] = field(default_factory=dict)
    delays: list[int] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)
    actions: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the action array)."""
        d = {k: getattr(self, k) for k in ("steps", "wall_s", "stop_reason", "chunks", "overruns", "late_ticks",
                                           "clamped", "jitter_ms", "inference_ms", "delays", "arrivals",
                                           "extra")}
        ok = self.actions is not None and len(self.actions) > 2
        d["smoothness"] = smoothness(self.actions, self.arrivals) if ok else None
        return d


def smoothness(actions: np.ndarray, arrivals: Sequence[int] = ()) -> dict[str, float | None]:
    """|Δa| (mean, max), mean |Δ²a| over a run (T, Da), and mean |Δa| into the ticks where a chunk took over.

    Units: action units per tick, averaged over action dimensions.
    """
    a = np.asarray(actions, np.float64)
    d1, d2 = np.abs(np.diff(a, axis=0)), np.abs(np.diff(a, n=2, axis=0))  # (T−1, Da), (T−2, Da)
    switch = [t - 1 for t in arrivals if 1 <= t < len(a)]  # d1[t − 1] = |a_t − a_{t−1}|
    return {"mean_abs_delta": float(d1.mean()), "max_abs_delta": float(d1.max()), "mean_abs_jerk": float(d2.mean()),
            "boundary_abs_delta": float(d1[switch].mean()) if switch else None}


class _Stop(Exception):
    """Ends the run with a reason."""


class ControlLoop:
    """Runs a chunked policy against a robot at ``config.rate_hz`` (see the module docstring).

    Args:
        policy: A :class:`lfm_policy.Policy` or a :class:`ChunkPredictor`.
        config: Loop settings.
        solver: Solver(s) of a local :class:`lfm_policy.Policy` (ignored for other predictors).
        clock: ``time.perf_counter``-like clock; ``sleep`` the matching sleep (tests may pass fakes).
        sleep: Sleep function.

    """

    def __init__(self, policy, config: LoopConfig | None = None, *, solver=None,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        self.config = config or LoopConfig()
        self.solver_choice: dict[str, Any] | None = None
        if isinstance(policy, ChunkPredictor):
            self.predictor = policy
        else:
            if self.config.budget_ms is not None and solver is None:
                from lfm_policy.runtime.bench import choose_solver

                self.solver_choice = choose_solver(policy, self.config.budget_ms, device=str(policy.device))
                solver = self.solver_choice["solver"]
            self.predictor = LocalPredictor(policy, solver=solver, guidance=self.config.inpaint_guidance)
        info = self.predictor.info
        self.info = info
        self.execute_steps = self.config.execute_steps or info.n_action_steps
        if self.execute_steps > info.horizon - info.chunk_start:
            raise ValueError(f"execute_steps {self.execute_steps} > executable chunk length "
                             f"{info.horizon - info.chunk_start}")
        if self.config.join == "inpaint" and not info.inpainting:
            raise ValueError(f"join='inpaint' needs a flow head (lfm, fm); this policy's head is {info.head!r}")
        self.low, self.high = info.limits(self.config.limit_margin)
        self._clock, self._sleep = clock, sleep
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------------------------------
    def _window(self, history: deque) -> dict[str, np.ndarray]:
        return {k: np.stack([f[k] for f in history]) for k in self.info.obs_shapes}  # (To, ...)

    def _infer(self, window: Mapping[str, np.ndarray], prefix, weights) -> tuple[np.ndarray, float]:
        t0 = self._clock()
        chunk = self.predictor.predict(window, prefix=prefix, prefix_weights=weights)
        return np.asarray(chunk, np.float32), 1e3 * (self._clock() - t0)

    def run(self, robot, *, max_steps: int | None = None, duration_s: float | None = None,
            seed: int | None = None, should_stop: Callable[[], bool] | None = None) -> LoopReport:
        """Run until the robot is done, ``max_steps`` ticks, ``duration_s`` seconds or ``should_stop()``.

        Args:
            robot: The robot interface (module docstring).
            max_steps: Tick limit.
            duration_s: Wall-time limit.
            seed: Noise seed of this episode (the predictor's ``reset(seed)``).
            should_stop: Polled every tick.

        Returns:
            A :class:`LoopReport`; the loop never raises for robot or policy faults (see ``stop_reason``).

        """
        cfg, info = self.config, self.info
        period = 1.0 / cfg.rate_hz
        report = LoopReport()
        history: deque = deque(maxlen=info.n_obs_steps)
        schedule = ChunkSchedule("none" if cfg.join == "inpaint" else cfg.join,
                                 crossfade_steps=cfg.crossfade_steps, ensemble_decay=cfg.ensemble_decay)
        jitter, infer_ms, sent = [], [], []
        delays: deque[int] = deque(maxlen=cfg.delay_window)
        pending: tuple[Future, int] | None = None
        last_action: np.ndarray | None = None
        if cfg.prefetch and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lfm-policy-inference")
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 5e-4))  # the tick thread gets the GIL back quickly from inference
        tick, t_start = 0, self._clock()
        target = t_start

        def accept(chunk: np.ndarray, ms: float, start: int) -> None:
            if chunk.shape != (info.horizon, info.action_dim):
                raise _Stop(f"policy error: chunk of shape {chunk.shape}, expected {(info.horizon, info.action_dim)}")
            if not np.isfinite(chunk).all():
                raise _Stop("policy returned a non-finite action")
            schedule.add(start, tick, chunk[info.chunk_start :])
            if tick > start or not delays:  # the lead follows the delays of background chunks
                delays.append(tick - start if tick > start else lead_ticks(ms, cfg.rate_hz))
            report.delays.append(tick - start)
            report.arrivals.append(tick)
            report.chunks += 1
            infer_ms.append(ms)

        def launch(window: dict, start: int) -> None:
            nonlocal pending
            prefix = weights = None
            if cfg.join == "inpaint" and schedule.current is not None:
                prefix = schedule.planned(start, info.horizon - info.chunk_start)
                lead = max(delays, default=1)
                weights = prefix_weights(len(prefix), lead) if len(prefix) else None
                prefix = prefix if len(prefix) else None
            if cfg.prefetch and schedule.current is not None:
                pending = (self._pool.submit(self._infer, window, prefix, weights), start)
            else:
                accept(*self._infer(window, prefix, weights), start)

        try:
            try:
                self.predictor.reset(seed)
            except Exception as e:  # noqa: BLE001  (e.g. the policy server is gone)
                raise _Stop(f"policy error in reset: {type(e).__name__}: {e}") from None
            while True:
                if max_steps is not None and tick >= max_steps:
                    raise _Stop("max_steps")
                if duration_s is not None and self._clock() - t_start >= duration_s:
                    raise _Stop("duration")
                if should_stop is not None and should_stop():
                    raise _Stop("stopped")
                now = self._clock()
                if target > now:
                    self._sleep(target - now)
                now = self._clock()
                jitter.append(1e3 * (now - target))
                if now - target > period:
                    report.late_ticks += 1
                    target = now  # re-anchor: no burst of catch-up ticks
                target += period
                try:
                    frame = {k: np.asarray(v) for k, v in robot.get_observation().items()}
                except Exception as e:  # noqa: BLE001
                    raise _Stop(f"robot error in get_observation: {type(e).__name__}: {e}") from None
                if not history:
                    history.extend([frame] * info.n_obs_steps)
                else:
                    history.append(frame)
                if pending is not None and pending[0].done():
                    future, start = pending
                    pending = None
                    try:
                        chunk, ms = future.result()
                    except Exception as e:  # noqa: BLE001
                        raise _Stop(f"policy error: {type(e).__name__}: {e}") from None
                    accept(chunk, ms, start)
                current = schedule.current
                consumed = tick - current.start if current is not None else None
                lead = max(delays, default=1) if cfg.prefetch else 0
                if pending is None and (current is None or consumed >= self.execute_steps - lead):
                    try:
                        launch(self._window(history), tick)
                    except _Stop:
                        raise
                    except Exception as e:  # noqa: BLE001
                        raise _Stop(f"policy error: {type(e).__name__}: {e}") from None
                current = schedule.current
                action = schedule.action_at(tick)
                if current is not None and tick - current.start >= self.execute_steps and pending is not None:
                    report.overruns += 1
                    if cfg.on_overrun == "stop":
                        raise _Stop("overrun")
                    if cfg.on_overrun == "hold":
                        action = None
                if action is None:
                    action = self._hold(last_action)
                action = np.asarray(action, np.float32)
                if cfg.clamp:
                    clipped = np.clip(action, self.low, self.high)
                    report.clamped += int(not np.array_equal(clipped, action))
                    action = clipped
                try:
                    robot.send_action(action)
                except Exception as e:  # noqa: BLE001
                    raise _Stop(f"robot error in send_action: {type(e).__name__}: {e}") from None
                last_action = action
                if cfg.record_actions:
                    sent.append(action)
                tick += 1
                report.steps = tick
                done = getattr(robot, "done", None)
                if done is not None and done():
                    raise _Stop("done")
        except _Stop as stop:
            report.stop_reason = str(stop)
        except KeyboardInterrupt:
            report.stop_reason = "interrupted"
        finally:
            sys.setswitchinterval(switch)
            if pending is not None:
                pending[0].cancel()
            if report.stop_reason not in ("done", "max_steps", "duration", "stopped"):
                self._stop_robot(robot, last_action)
        report.wall_s = self._clock() - t_start
        report.jitter_ms, report.inference_ms = latency_stats(jitter), latency_stats(infer_ms)
        report.actions = np.stack(sent) if sent else np.zeros((0, info.action_dim), np.float32)
        describe = getattr(robot, "report", None)
        if describe is not None:
            report.extra = dict(describe())
        return report

    def _hold(self, last_action: np.ndarray | None) -> np.ndarray:
        if self.config.hold_action is not None:
            return np.asarray(self.config.hold_action, np.float32)
        if last_action is not None:
            return last_action
        return ((self.low + self.high) / 2).astype(np.float32)

    def _stop_robot(self, robot, last_action: np.ndarray | None) -> None:
        """Hold the robot after a fault (its ``hold()`` if it has one, else the hold action once more)."""
        try:
            hold = getattr(robot, "hold", None)
            if hold is not None:
                hold()
            elif last_action is not None or self.config.hold_action is not None:
                robot.send_action(self._hold(last_action))
        except Exception:  # noqa: BLE001  (the robot is already failing: nothing more to do)
            pass

    def close(self) -> None:
        """Stop the inference thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ControlLoop:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def lead_ticks(latency_ms: float, rate_hz: float) -> int:
    """Ticks a chunk computed in ``latency_ms`` takes to arrive with prefetch (≥ 1)."""
    return max(1, math.ceil(latency_ms * rate_hz / 1e3))
