"""Running a policy on a robot: control loop, policy server and client, export, latency benchmark.

``from lfm_policy.runtime import ControlLoop, LocalPredictor, PolicyClient`` — the network pieces
(websockets, msgpack) and the exporter (onnx) load only when their names are first used.
"""

from __future__ import annotations

import importlib

from lfm_policy.runtime.interface import ChunkPredictor, LocalPredictor, ObservationError, PolicyInfo, validate_window

_LAZY = {
    "ControlLoop": "lfm_policy.runtime.loop",
    "LoopConfig": "lfm_policy.runtime.loop",
    "LoopReport": "lfm_policy.runtime.loop",
    "SimRobot": "lfm_policy.runtime.sim_robot",
    "PolicyClient": "lfm_policy.runtime.client",
    "PolicyServer": "lfm_policy.runtime.server",
}

__all__ = ["ChunkPredictor", "LocalPredictor", "ObservationError", "PolicyInfo", "validate_window", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lfm_policy.runtime' has no attribute {name!r}")
