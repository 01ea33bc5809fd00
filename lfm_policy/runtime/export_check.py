"""Parity and latency of an exported ONNX policy against eager PyTorch (see :mod:`lfm_policy.runtime.export`).

:func:`check_parity` is what :func:`~lfm_policy.runtime.export.export_onnx` runs before it publishes a file;
:func:`compare_latency` times onnxruntime (one intra-op thread) against eager PyTorch (one thread).
onnxruntime is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np
import torch

from lfm_policy.errors import LfmPolicyError
from lfm_policy.runtime.export import NOISE, OUTPUT, input_names, resolve_sampler
from lfm_policy.runtime.interface import latency_stats, random_inputs


def _eager_chunk(policy, obs: dict[str, np.ndarray], noise: np.ndarray, sampler: Any) -> np.ndarray:
    """(B, H, Da) from eager :meth:`Policy.predict_action_chunk` with the exported sampler."""
    chunk = policy.predict_action_chunk({k: torch.from_numpy(v) for k, v in obs.items()},
                                        noise=torch.from_numpy(noise).to(policy.device), solver=sampler)
    return chunk.float().cpu().numpy()


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU session on ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(policy, path: str | os.PathLike, sampler: Any, names: dict[str, str], *, batch: int | None,
                 samples: int = 8, seed: int = 0) -> tuple[float, float]:
    """Max |onnxruntime − eager| and max |eager chunk| over random windows (:func:`random_inputs`).

    Args:
        policy: The policy (eval mode), on the CPU.
        path: The ONNX file.
        sampler: The resolved sampler it bakes in (:func:`~lfm_policy.runtime.export.resolve_sampler`).
        names: Graph input name of each observation key.
        batch: The file's fixed batch size, or None (dynamic): then one window runs at batch 1 and
            ``samples`` windows as one batch; a fixed batch B runs ⌈samples / B⌉ batches of B.
        samples: Windows to check.
        seed: Seed of the windows and noise.

    Returns:
        (max abs difference — inf on a NaN or a shape mismatch —, max abs eager chunk value).

    """
    session = onnx_session(path)
    rng = np.random.default_rng(seed)
    sizes = [batch] * math.ceil(samples / batch) if batch else [1] + ([samples] if samples > 1 else [])
    diff = big = 0.0
    for b in sizes:
        obs, noise = random_inputs(policy, b, rng)
        ref = _eager_chunk(policy, obs, noise, sampler)  # (B, H, Da)
        got = session.run([OUTPUT], {**{names[k]: v for k, v in obs.items()}, NOISE: noise})[0]
        d = float(np.max(np.abs(got.astype(np.float64) - ref))) if got.shape == ref.shape else math.inf
        diff = max(diff, math.inf if math.isnan(d) else d)  # a NaN fails the check
        big = max(big, float(np.max(np.abs(ref))))
    return diff, big


# ------------------------------------------------------------------------------------------ latency
@dataclasses.dataclass
class LatencyReport:
    """Chunk latency of eager PyTorch vs onnxruntime, one thread each, same windows and noise.

    Attributes:
        batch: Batch size of every call.
        calls: Timed calls per runtime (after ``warmup`` untimed ones), interleaved.
        eager_p50_ms: Median eager :meth:`Policy.predict_action_chunk` latency.
        eager_p95_ms: Its 95th percentile.
        onnx_p50_ms: Median onnxruntime ``session.run`` latency.
        onnx_p95_ms: Its 95th percentile.

    """

    batch: int
    calls: int
    eager_p50_ms: float
    eager_p95_ms: float
    onnx_p50_ms: float
    onnx_p95_ms: float

    @property
    def speedup(self) -> float:
        """Eager p50 ÷ onnxruntime p50."""
        return self.eager_p50_ms / self.onnx_p50_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with ``speedup``)."""
        return {**dataclasses.asdict(self), "speedup": self.speedup}

    def markdown(self) -> str:
        """A small Markdown table."""
        return ("| runtime | p50 ms | p95 ms |\n|---|---|---|\n"
                f"| PyTorch eager | {self.eager_p50_ms:.3f} | {self.eager_p95_ms:.3f} |\n"
                f"| onnxruntime | {self.onnx_p50_ms:.3f} | {self.onnx_p95_ms:.3f} |\n"
                f"| eager ÷ onnxruntime | {self.speedup:.2f}× | |")


def compare_latency(policy, path: str | os.PathLike, *, solver: Any = None, calls: int = 200, warmup: int = 20,
                    seed: int = 0) -> LatencyReport:
    """Time ``calls`` chunks of eager PyTorch (``torch.set_num_threads(1)``) and of the ONNX file.

    Args:
        policy: The policy the file was exported from.
        path: The ONNX file.
        solver: The sampler it was exported with (None: the checkpoint's own).
        calls: Timed calls per runtime, alternating between the two so that load drifts hit both alike.
        warmup: Untimed calls of each first.
        seed: Seed of the window and noise (one window, reused).

    Returns:
        p50/p95 of both at batch 1 (or the file's fixed batch). The policy is left in eval mode.

    """
    if calls < 1:
        raise LfmPolicyError(f"latency: calls must be ≥ 1, got {calls}")
    sampler, _ = resolve_sampler(policy, solver)
    policy = policy.eval()
    session = onnx_session(path, threads=1)
    dim = session.get_inputs()[-1].shape[0]
    batch = dim if isinstance(dim, int) else 1
    names = input_names(list(policy.spec.obs_shapes))
    obs, noise = random_inputs(policy, batch, np.random.default_rng(seed))
    feed = {**{names[k]: v for k, v in obs.items()}, NOISE: noise}
    obs_t = {k: torch.from_numpy(v) for k, v in obs.items()}
    noise_t = torch.from_numpy(noise).to(policy.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eager, onnx_ms = [], []
    try:
        for i in range(warmup + calls):
            t0 = time.perf_counter()
            policy.predict_action_chunk(obs_t, noise=noise_t, solver=sampler)
            t1 = time.perf_counter()
            session.run([OUTPUT], feed)
            t2 = time.perf_counter()
            if i >= warmup:
                eager.append(1e3 * (t1 - t0))
                onnx_ms.append(1e3 * (t2 - t1))
    finally:
        torch.set_num_threads(threads)
    e, o = latency_stats(eager), latency_stats(onnx_ms)
    return LatencyReport(batch=batch, calls=calls, eager_p50_ms=e["p50"], eager_p95_ms=e["p95"], onnx_p50_ms=o["p50"],
                         onnx_p95_ms=o["p95"])
