"""Where each control tick's action comes from: the chunks in flight and how consecutive ones join.

A chunk predicted from the observation of tick ``s`` covers ticks ``s, s+1, …`` with its executable
part ``chunk[To−1:]`` (L = H − To + 1 actions). When inference ran in the background for ``d`` ticks,
the chunk arrives at tick ``s + d`` and its first ``d`` actions are already in the past: they are
skipped because the schedule indexes every chunk by absolute tick — the delay is the count of
actions actually consumed meanwhile, never an estimate.

Join modes at the boundary between the current chunk and the one that just arrived:

* ``none`` — switch to the new chunk at its arrival tick;
* ``crossfade`` — over the first ``crossfade_steps`` ticks after arrival, blend linearly from the old
  chunk's plan to the new one (weights (k+1)/(m+1) on the new chunk);
* ``ensemble`` — temporal ensembling as ACT: every chunk that covers the tick votes with weight
  exp(−m·i), i = 0 for the oldest (m = ``ensemble_decay``);
* ``inpaint`` — switch as ``none``, but the new chunk was generated to agree with the old chunk on the
  overlap (:func:`prefix_weights`, :mod:`lfm_policy.runtime.inpaint`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

JOIN_MODES = ("none", "crossfade", "ensemble", "inpaint")


@dataclass
class _Chunk:
    start: int  # tick of the observation the chunk was predicted from
    arrival: int  # tick from which it may be executed
    actions: np.ndarray  # (L, Da) executable actions, actions[k] is for tick start + k

    def covers(self, tick: int) -> bool:
        return self.arrival <= tick < self.start + len(self.actions)

    def at(self, tick: int) -> np.ndarray:
        return self.actions[tick - self.start]


class ChunkSchedule:
    """The chunks that may still provide actions, and the join rule (see the module docstring).

    Args:
        join: One of :data:`JOIN_MODES`.
        crossfade_steps: Ticks of the linear blend (``crossfade``).
        ensemble_decay: m of ACT's weights exp(−m·i) (``ensemble``).

    """

    def __init__(self, join: str = "none", *, crossfade_steps: int = 3, ensemble_decay: float = 0.01):
        if join not in JOIN_MODES:
            raise ValueError(f"join must be one of {JOIN_MODES}, got {join!r}")
        self.join, self.crossfade_steps, self.ensemble_decay = join, int(crossfade_steps), float(ensemble_decay)
        self._chunks: list[_Chunk] = []

    def clear(self) -> None:
        """Forget every chunk (episode start)."""
        self._chunks = []

    def add(self, start: int, arrival: int, actions: np.ndarray) -> None:
        """Add the executable actions (L, Da) of a chunk observed at tick ``start``, usable from ``arrival``."""
        self._chunks.append(_Chunk(int(start), int(arrival), np.asarray(actions, np.float32)))

    @property
    def current(self) -> _Chunk | None:
        """The newest chunk."""
        return self._chunks[-1] if self._chunks else None

    def planned(self, tick: int, count: int) -> np.ndarray:
        """The newest chunk's actions for ticks ``tick … tick+count−1`` that it still covers: (≤ count, Da)."""
        c = self.current
        if c is None:
            return np.zeros((0, 0), np.float32)
        lo = max(0, tick - c.start)
        return c.actions[lo : lo + count]

    def action_at(self, tick: int) -> np.ndarray | None:
        """The action for ``tick`` (None when no chunk covers it)."""
        self._chunks = [c for c in self._chunks if tick < c.start + len(c.actions)]  # drop the finished
        live = [c for c in self._chunks if c.covers(tick)]
        if not live:
            return None
        new = live[-1]
        if self.join == "ensemble" and len(live) > 1:
            w = np.exp(-self.ensemble_decay * np.arange(len(live)))  # oldest first, as ACT
            return (w[:, None] * np.stack([c.at(tick) for c in live])).sum(0) / w.sum()
        if self.join == "crossfade" and len(live) > 1:
            k = tick - new.arrival
            if k < self.crossfade_steps:
                w = (k + 1) / (self.crossfade_steps + 1)
                return (1 - w) * live[-2].at(tick) + w * new.at(tick)
        return new.at(tick)


def prefix_weights(n_prefix: int, committed: int) -> np.ndarray:
    """Soft inpainting mask (P,) of real-time chunking (arXiv 2506.07339, eq. 5).

    The first ``committed`` steps (executed before the new chunk can arrive) weigh 1; the rest of the
    overlap decays as c·(e^c − 1)/(e − 1) with c = (P − i)/(P − committed + 1).
    """
    i = np.arange(n_prefix, dtype=np.float64)
    c = (n_prefix - i) / max(1, n_prefix - committed + 1)
    w = c * np.expm1(c) / math.expm1(1.0)
    w[: min(committed, n_prefix)] = 1.0
    return w.astype(np.float32)
