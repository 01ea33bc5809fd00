"""Latency of a policy the way a deployment sees it, and the solver that fits a time budget.

:func:`bench_policy` times observation encoding and sampling separately at batch B (p50/p95 over many
calls after warm-up, synchronized on CUDA), the whole chunk, and the throughput at a larger batch;
optionally through ``torch.compile`` or (CUDA) a captured CUDA graph of the whole chunk.
:func:`choose_solver` is the anytime-NFE rule shared with the control loop: from a ladder of solver
settings of increasing accuracy (students first, then Euler, midpoint, RK4 with more steps; DDIM with
more steps), the most accurate one whose p95 chunk latency fits ``budget_ms``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lfm_policy.errors import LfmPolicyError
from lfm_policy.runtime.interface import latency_stats, random_inputs


def random_obs(policy, batch: int, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A random observation batch ``{key: (B, To, ...)}`` as tensors on ``device`` (:func:`random_inputs`)."""
    obs, _ = random_inputs(policy, batch, np.random.default_rng(seed))
    return {k: torch.from_numpy(v).to(device) for k, v in obs.items()}


def _timed(fn: Callable[[], Any], calls: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def _cuda_graph(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Capture ``fn`` (static inputs inside) as a CUDA graph; returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def bench_policy(policy, *, solver=None, device: str = "cpu", batch: int = 1, calls: int = 200, warmup: int = 20,
                 throughput_batch: int = 64, compile: bool = False, cuda_graph: bool = False) -> dict[str, Any]:
    """Time one policy: encode, sample and whole chunk (ms p50/p95) at ``batch``; chunks/s at a larger batch.

    Args:
        policy: A loaded :class:`lfm_policy.Policy` (moved to ``device``).
        solver: Sampling solver (None: the checkpoint's own).
        device: ``cpu`` or ``cuda``.
        batch: Batch of the latency figures.
        calls: Timed calls after ``warmup``.
        warmup: Untimed calls first.
        throughput_batch: Batch of the throughput figure (0 skips it).
        compile: ``torch.compile`` the encoder and the sampler.
        cuda_graph: Capture the whole chunk as a CUDA graph (CUDA only).

    """
    if cuda_graph and not str(device).startswith("cuda"):
        raise LfmPolicyError("--cuda-graph needs --device cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise LfmPolicyError("--device cuda: no CUDA device is available here")
    policy = policy.to(device).eval()
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    spec_h, da = policy.config.horizon, policy.spec.action_dim
    encode, sample = policy.encode, policy.sample_chunk
    if compile:
        encode, sample = torch.compile(policy.encode), torch.compile(policy.sample_chunk)

    def run(b: int):
        obs = random_obs(policy, b, device=device)
        noise = torch.randn(b, spec_h, da, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad():
            cond = encode(obs)
        return (lambda: encode(obs)), (lambda: sample(cond, noise=noise, solver=solver)), \
            (lambda: sample(encode(obs), noise=noise, solver=solver))

    enc_fn, samp_fn, chunk_fn = run(batch)
    with torch.no_grad():
        if cuda_graph:
            chunk_fn = _cuda_graph(chunk_fn)
        enc = _timed(enc_fn, calls, warmup, sync)
        samp = _timed(samp_fn, calls, warmup, sync)
        chunk = _timed(chunk_fn, calls, warmup, sync)
        out: dict[str, Any] = {"device": str(device), "batch": batch, "nfe": policy.nfe(solver),
                               "head": policy.config.head.kind, "params": policy.num_trained_params(),
                               "compile": compile, "cuda_graph": cuda_graph,
                               "encode_ms": latency_stats(enc), "sample_ms": latency_stats(samp),
                               "chunk_ms": latency_stats(chunk)}
        if throughput_batch:
            _, _, big = run(throughput_batch)
            ms = _timed(big, max(5, calls // 20), 2, sync)
            rate = 1e3 * throughput_batch / float(np.median(ms))
            out["throughput"] = {"batch": throughput_batch, "chunks_per_s": rate}
    if str(device).startswith("cuda"):
        out["card"] = torch.cuda.get_device_name()
    return out


def solver_ladder(policy) -> list[tuple[str, Any]]:
    """(label, solver) settings of increasing cost and accuracy for this policy's head."""
    from lfm_policy.flow.solvers import STUDENT, SolverConfig
    from lfm_policy.heads import DiffusionSampler

    kind = policy.config.head.kind
    if kind == "regression":
        return [("one-shot", None)]
    if kind == "diffusion":
        n = policy.config.head.diffusion.num_train_timesteps
        return [(f"ddim:{k}", DiffusionSampler("ddim", k)) for k in (1, 2, 4, 8, 10, 16, 32, 50, 100) if k <= n]
    chain = policy.head.chain
    n = chain.n_blocks
    ode = [SolverConfig(method=m, steps=k) for m, k in (("euler", 1), ("midpoint", 1), ("midpoint", 2), ("rk4", 1),
                                                         ("rk4", 2), ("rk4", 4), ("rk4", 8))]
    if not any(chain.config.student(b) for b in range(n)):
        return [(f"{s.method}:{s.steps}", s) for s in ode]
    # Distilled: the students, then more exact steps on the free block (its student is the least exact),
    # then the teacher's accurate ODE everywhere.
    base = [SolverConfig(method=STUDENT) if chain.config.student(b) else ode[0] for b in range(n)]

    def label(per: list) -> str:
        return ",".join(STUDENT if x.method == STUDENT else f"{x.method}:{x.steps}" for x in per)

    ladder = [(label(base), base)] + [(label([*base[:-1], s]), [*base[:-1], s]) for s in ode[1:4]]
    return ladder + [(f"{s.method}:{s.steps}", s) for s in ode[3:]]


def choose_solver(policy, budget_ms: float, *, device: str = "cpu", calls: int = 30,
                  warmup: int = 5) -> dict[str, Any]:
    """The most accurate setting of :func:`solver_ladder` whose p95 chunk latency (batch 1) ≤ ``budget_ms``.

    The ladder is ordered by accuracy and cost, so the search stops at the first setting that does not fit.

    Returns:
        ``{"label", "solver", "nfe", "chunk_ms_p95", "fits", "candidates": [...]}``; ``fits`` is False
        (and the cheapest setting is returned) when nothing fits.

    """
    candidates = []
    for label, solver in solver_ladder(policy):
        r = bench_policy(policy, solver=solver, device=device, calls=calls, warmup=warmup, throughput_batch=0)
        candidates.append({"label": label, "solver": solver, "nfe": r["nfe"], "chunk_ms_p95": r["chunk_ms"]["p95"]})
        if candidates[-1]["chunk_ms_p95"] > budget_ms:
            break
    fitting = [c for c in candidates if c["chunk_ms_p95"] <= budget_ms]
    best = fitting[-1] if fitting else candidates[0]
    return {**best, "fits": bool(fitting), "budget_ms": budget_ms,
            "candidates": [{k: v for k, v in c.items() if k != "solver"} for c in candidates]}
