"""Round-trip overhead of the policy server over in-process inference (batch 1, loopback, CPU).

For each policy, ``LocalPredictor.predict`` in this process and ``PolicyClient.predict`` against an
``lfm-policy serve`` subprocess on 127.0.0.1 are timed on the same observation window, interleaved in
``--rounds`` rounds (so load drifts on a shared machine hit both alike), ``--calls`` timed calls each
after ``--warmup`` untimed ones. Policies: an untrained low-dim LFM policy, an untrained image policy
with two 84×84 cameras (small CNN encoder), and every ``--checkpoint`` given. Prints a Markdown table
(p50/p95 in ms) and writes ``--out`` (JSON).

    python benchmarks/bench_server.py --out outputs/bench_server.json \
        --checkpoint outputs/distill_table/toy_point-obstacle/lfm_distilled/checkpoints/latest
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import lfm_policy
from lfm_policy import Policy, PolicyConfig, PolicySpec
from lfm_policy.flow import ChainConfig, SolverConfig
from lfm_policy.heads import HeadConfig, MLPConfig, NetConfig
from lfm_policy.nets.obs_encoder import ObsEncoderConfig
from lfm_policy.normalizer import LinearNormalizer
from lfm_policy.runtime import protocol
from lfm_policy.runtime.client import PolicyClient
from lfm_policy.runtime.interface import LocalPredictor


def build_policy(image: bool) -> Policy:
    """An untrained, sampling-ready LFM policy (2 blocks × Euler 2; MLP 256×3), low-dim or 2 cameras."""
    torch.manual_seed(0)
    shapes = {"agent_pos": (9,)}
    if image:
        shapes |= {"front_image": (84, 84, 3), "wrist_image": (84, 84, 3)}
    spec = PolicySpec(obs_shapes=shapes, image_keys=tuple(k for k in shapes if k.endswith("_image")), action_dim=7)
    encoder = ObsEncoderConfig(backbone="small_cnn", crop_shape=(76, 76)) if image else ObsEncoderConfig()
    cfg = PolicyConfig(n_obs_steps=2, horizon=16, n_action_steps=8, encoder=encoder,
                       head=HeadConfig(kind="lfm", net=NetConfig(family="mlp", mlp=MLPConfig(width=256, depth=3)),
                                       chain=ChainConfig(n_blocks=2, sample_solver=SolverConfig("euler", 2))))
    stats = {"action": {"min": -np.ones(7), "max": np.ones(7)}, "agent_pos": {"min": -np.ones(9), "max": np.ones(9)}}
    policy = Policy(cfg, spec, LinearNormalizer.from_stats(stats, image_keys=spec.image_keys))
    g = torch.Generator().manual_seed(0)
    obs = {k: (torch.randint(0, 256, (2, 2, *s), dtype=torch.uint8, generator=g) if k in spec.image_keys
               else torch.rand(2, 2, *s, generator=g)) for k, s in shapes.items()}
    batch = {"obs": obs, "action": torch.rand(2, 16, 7, generator=g) - 0.5}
    for stage in range(policy.head.n_stages):  # one step per stage so the EMA copies exist
        policy.begin_stage(stage)
        policy.compute_loss(batch, stage=stage)[0].backward()
        policy.after_step(stage)
        policy.end_stage(stage)
    return policy.eval()


def window_for(info, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.integers(0, 256, (info.n_obs_steps, *s), dtype=np.uint8) if k in info.image_keys
                else rng.random((info.n_obs_steps, *s), dtype=np.float32)) for k, s in info.obs_shapes.items()}


def start_server(ckpt: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """An ``lfm-policy serve`` subprocess on a free loopback port, and its URL (read from its log)."""
    proc = subprocess.Popen([sys.executable, "-m", "lfm_policy.cli", "serve", str(ckpt), "--port", "0",
                             "--threads", str(threads)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            m = re.search(r"policy server at (ws://\S+?):? head=", lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if m:
            return proc, m[1]
    proc.kill()
    raise RuntimeError(f"lfm-policy serve {ckpt} did not start")


def pct(xs: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)), "n": len(xs)}


def bench(name: str, ckpt: Path, args: argparse.Namespace) -> dict:
    local = LocalPredictor(Policy.load(ckpt))
    window = window_for(local.info)
    proc, url = start_server(ckpt, args.threads)
    try:
        with PolicyClient(url) as client:
            local.reset(0)
            client.reset(0)
            for _ in range(args.warmup):
                local.predict(window)
                client.predict(window)
            t_local, t_remote, t_server = [], [], []
            per_round = max(1, args.calls // args.rounds)
            for _ in range(args.rounds):
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    local.predict(window)
                    t_local.append(1e3 * (time.perf_counter() - t0))
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    client.predict(window)
                    t_remote.append(1e3 * (time.perf_counter() - t0))
                    t_server.append(client.last_timing["server_ms"])
    finally:
        proc.terminate()
        proc.wait(30)
    request = len(protocol.encode({"type": "infer", "obs": window, "id": 1}))
    row = {"policy": name, "checkpoint": str(ckpt), "head": local.info.head, "nfe": local.info.nfe,
           "obs": {k: list(s) for k, s in local.info.obs_shapes.items()}, "request_bytes": request,
           "local_ms": pct(t_local), "client_ms": pct(t_remote), "server_ms": pct(t_server),
           "transport_ms": pct([r - s for r, s in zip(t_remote, t_server)])}
    row["overhead_p50_ms"] = row["client_ms"]["p50"] - row["local_ms"]["p50"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], help="also time this checkpoint (repeatable)")
    p.add_argument("--calls", type=int, default=200, help="timed calls per policy and side (default 200)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4, help="local/remote alternations (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server (default 1)")
    p.add_argument("--out", default="outputs/bench_server.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(name, build_policy(image).save(Path(tmp) / name))
                 for name, image in (("low-dim (9,) untrained", False), ("2 cams 84×84 + (9,) untrained", True))]
        cases += [("/".join(Path(c).parts[-4:-2]) or c, Path(c)) for c in args.checkpoint]
        for name, ckpt in cases:
            rows.append(bench(name, ckpt, args))
            print(f"{name}: {rows[-1]['overhead_p50_ms']:.2f} ms overhead", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"lfm_policy": lfm_policy.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "threads": args.threads, "calls": args.calls}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("\n| policy | head, NFE | request | in-process p50 / p95 ms | client p50 / p95 ms | server-side p50 ms "
          "| wire + client p50 ms | overhead p50 ms |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['head']}, {r['nfe']} | {r['request_bytes'] / 1024:.1f} KiB "
              f"| {r['local_ms']['p50']:.2f} / {r['local_ms']['p95']:.2f} "
              f"| {r['client_ms']['p50']:.2f} / {r['client_ms']['p95']:.2f} | {r['server_ms']['p50']:.2f} "
              f"| {r['transport_ms']['p50']:.2f} | {r['overhead_p50_ms']:+.2f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
