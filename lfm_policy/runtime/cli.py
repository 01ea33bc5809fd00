"""``lfm-policy bench`` (latency per chunk) and ``lfm-policy control`` (the control loop on a simulated robot).

Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and ``control`` to the top-level parser."""
    p = subparsers.add_parser(
        "bench", help="latency per chunk (encode / sample / whole, p50 & p95) and throughput",
        description="Time CHECKPOINT[@SOLVER] ... in one process (so the ratios between them are fair): "
        "observation encoding and sampling separately, p50/p95 over --calls calls after warm-up, and throughput "
        "at --throughput-batch. With --budget-ms, pick the per-block solver steps that fit the budget.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT[@SOLVER]",
                   help="checkpoint directory, optionally @solver (e.g. run/checkpoints/latest@ddpm, @midpoint:2, "
                        "@student,student,midpoint:1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, default=1, help="batch of the latency figures (default 1)")
    p.add_argument("--calls", type=int, default=200, help="timed calls (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    p.add_argument("--throughput-batch", type=int, default=64, help="batch of the throughput figure (0: skip)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and the sampler")
    p.add_argument("--cuda-graph", action="store_true", help="capture the whole chunk as a CUDA graph (CUDA only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for small nets)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="choose the most accurate solver setting whose p95 chunk latency fits this budget")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=_bench)

    c = subparsers.add_parser(
        "control", help="run the control loop at a fixed rate on a simulated robot (locally or via a server)",
        description="Drive TASK's simulator as a robot with lfm_policy.runtime.ControlLoop in real time, episode i "
        "seeded SEED_START+i as `lfm-policy eval`; report success, loop jitter, inference latency and overruns.")
    c.add_argument("checkpoint", help="checkpoint directory, or ws://HOST:PORT of `lfm-policy serve`")
    c.add_argument("--task", required=True, help="task name (see `lfm-policy tasks`)")
    c.add_argument("--episodes", type=int, default=10)
    c.add_argument("--seed-start", type=int, default=100000)
    c.add_argument("--rate", type=float, default=10.0, help="control rate in Hz (default 10)")
    c.add_argument("--no-prefetch", action="store_true", help="compute chunks synchronously (as eval does)")
    c.add_argument("--join", default="none", choices=("none", "crossfade", "ensemble", "inpaint"))
    c.add_argument("--on-overrun", default="continue", choices=("continue", "hold", "stop"))
    c.add_argument("--execute-steps", type=int, default=None, help="actions executed per chunk (default Ta)")
    c.add_argument("--solver", default=None, help="solver of a local checkpoint (as in eval)")
    c.add_argument("--budget-ms", type=float, default=None, help="pick the solver that fits this chunk budget")
    c.add_argument("--token-file", default=None, help="shared secret for a server URL")
    c.add_argument("--images", action="store_true", help="make the env with camera observations")
    c.add_argument("--json", default=None, metavar="PATH", help="write per-episode reports as JSON")
    c.set_defaults(func=_control)


def _split(arg: str) -> tuple[str, str | None]:
    path, sep, solver = arg.partition("@")
    return path, (solver if sep else None)


def _bench(args: argparse.Namespace) -> int:
    import logging

    import torch

    from lfm_policy import Policy
    from lfm_policy.runtime.bench import bench_policy, choose_solver
    from lfm_policy.runtime.interface import parse_solver

    torch.set_num_threads(args.threads)
    if args.compile:
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph breaks at python checks are expected
    rows: list[dict[str, Any]] = []
    for arg in args.checkpoints:
        path, text = _split(arg)
        policy = Policy.load(path, map_location=args.device)
        solver = parse_solver(policy, text)
        chosen = None
        if args.budget_ms is not None:
            chosen = choose_solver(policy, args.budget_ms, device=args.device)
            solver = chosen["solver"]
            print(f"{path}: budget {args.budget_ms} ms → {chosen['label']} (NFE {chosen['nfe']}, p95 "
                  f"{chosen['chunk_ms_p95']:.2f} ms{'' if chosen['fits'] else ', nothing fits: cheapest'})")
        r = bench_policy(policy, solver=solver, device=args.device, batch=args.batch, calls=args.calls,
                         warmup=args.warmup, throughput_batch=args.throughput_batch, compile=args.compile,
                         cuda_graph=args.cuda_graph)
        r["checkpoint"], r["solver"] = path, (chosen["label"] if chosen else text)
        if chosen:
            r["budget"] = {k: v for k, v in chosen.items() if k != "solver"}
        rows.append(r)
    base = rows[0]["chunk_ms"]["p50"]
    print(f"\ndevice {rows[0]['device']}{' (' + rows[0]['card'] + ')' if 'card' in rows[0] else ''}, batch "
          f"{args.batch}, {args.calls} calls, threads {args.threads}")
    print("| checkpoint | solver | head | NFE | encode p50 | sample p50 | chunk p50 | chunk p95 | ÷ first | chunks/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tp = r.get("throughput", {}).get("chunks_per_s")
        print(f"| {r['checkpoint']} | {r['solver'] or 'own'} | {r['head']} | {r['nfe']} | "
              f"{r['encode_ms']['p50']:.3f} | {r['sample_ms']['p50']:.3f} | {r['chunk_ms']['p50']:.3f} | "
              f"{r['chunk_ms']['p95']:.3f} | {r['chunk_ms']['p50'] / base:.2f} | {f'{tp:.0f}' if tp else '-'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


def _policy(args: argparse.Namespace):
    """(a Policy and its --solver, parsed) for a checkpoint path, or (a PolicyClient, None) for a ws:// URL."""
    if args.checkpoint.startswith(("ws://", "wss://")):
        from lfm_policy.runtime.client import PolicyClient

        token = Path(args.token_file).read_text().strip() if args.token_file else None
        return PolicyClient(args.checkpoint, token=token), None
    import torch

    from lfm_policy import Policy
    from lfm_policy.runtime.interface import parse_solver

    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    return policy, parse_solver(policy, args.solver)


def _control(args: argparse.Namespace) -> int:
    import numpy as np

    from lfm_policy.runtime.loop import ControlLoop, LoopConfig
    from lfm_policy.runtime.sim_robot import SimRobot

    policy, solver = _policy(args)
    cfg = LoopConfig(rate_hz=args.rate, prefetch=not args.no_prefetch, join=args.join, on_overrun=args.on_overrun,
                     execute_steps=args.execute_steps, budget_ms=args.budget_ms)
    from lfm_policy.eval.environment import policy_camera_kwargs

    spec = policy.spec if hasattr(policy, "spec") else policy.info  # a Policy or a PolicyClient
    cams = {k: tuple(spec.obs_shapes[k]) for k in spec.image_keys}
    robot = SimRobot(args.task, images=args.images or bool(cams), **policy_camera_kwargs(args.task, cams, {}))
    reports = []
    with ControlLoop(policy, cfg, solver=solver) as loop:
        chosen = loop.solver_choice
        label = f"{chosen['label']} (budget {args.budget_ms} ms)" if chosen else args.solver
        for i in range(args.episodes):
            seed = args.seed_start + i
            robot.reset(seed=seed)
            r = loop.run(robot, seed=seed).to_dict()
            r["seed"] = seed
            reports.append(r)
            print(f"episode {i} seed {seed}: success {r['extra'].get('is_success')} steps {r['steps']} "
                  f"({r['stop_reason']}), inference p95 {r['inference_ms']['p95']:.2f} ms, jitter p95 "
                  f"{r['jitter_ms']['p95']:.2f} ms, overruns {r['overruns']}", flush=True)
    success = float(np.mean([bool(r["extra"].get("is_success")) for r in reports])) if reports else 0.0
    print(f"success {success:.3f} over {len(reports)} episodes at {args.rate} Hz (solver {label or 'own'}, join "
          f"{args.join}, prefetch {not args.no_prefetch})")
    if args.json:
        Path(args.json).write_text(json.dumps({"success_rate": success, "solver": label, "config": cfg.to_dict(),
                                               "episodes": reports}, indent=2, default=str))
    return 0
