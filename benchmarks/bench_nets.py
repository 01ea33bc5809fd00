"""Parameter counts, op counts and CPU latency of the velocity networks and observation encoders.

Usage:
    .venv/bin/python benchmarks/bench_nets.py [--threads 2] [--reps 20] [--json out.json] [--no-encoders]

Velocity nets are timed in eval mode under torch.inference_mode for one forward (one NFE) on chunks
of H = 16 actions with Da = 7 and Da = 2, batch 1 and 64, condition size Dc (default 64). "ops" is
the number of non-view ATen ops one forward dispatches (counted with a TorchDispatchMode) -- a proxy
for kernel launches, which dominate GPU latency at batch 1; "modules" counts leaf nn.Modules. "train" is one
forward+backward at batch 64, Da = 7. The tables show the best of --reps runs after warm-up (on a
shared machine the fastest run is the least disturbed one); the JSON also has the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lfm_policy.nets.mlp import ResidualMLP
from lfm_policy.nets.obs_encoder import ObsEncoder, ObsEncoderConfig
from lfm_policy.nets.transformer import TransformerVelocityNet
from lfm_policy.nets.unet1d import ConditionalUnet1D

H = 16
NETS = {
    "unet_dp (256,512,1024)": lambda shape, dc: ConditionalUnet1D(shape, dc, down_dims=(256, 512, 1024)),
    "unet_half (128,256,512)": lambda shape, dc: ConditionalUnet1D(shape, dc, down_dims=(128, 256, 512),
                                                                   time_dim=128),
    "unet_small (64,128,256)": lambda shape, dc: ConditionalUnet1D(shape, dc, down_dims=(64, 128, 256),
                                                                   time_dim=64),
    "transformer d128 L4": lambda shape, dc: TransformerVelocityNet(shape, dc, d_model=128, n_layers=4),
    "transformer d64 L2": lambda shape, dc: TransformerVelocityNet(shape, dc, d_model=64, n_layers=2,
                                                                   time_dim=64),
    "residual_mlp w256 d3": lambda shape, dc: ResidualMLP(shape, dc, width=256, depth=3),
    "residual_mlp w512 d4": lambda shape, dc: ResidualMLP(shape, dc, width=512, depth=4),
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def n_leaf_modules(m: nn.Module) -> int:
    return sum(1 for x in m.modules() if not list(x.children()))


def time_ms(fn, reps: int, warmup: int = 3) -> tuple[float, float]:
    """(best, median) wall time of fn in ms over reps runs after warmup runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times), 1000 * statistics.median(times)


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops that reach the dispatcher, skipping pure view ops (no kernel)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    """Non-view ATen ops dispatched by one call of fn (a proxy for kernel launches)."""
    with _OpCounter() as counter:
        fn()
    return counter.n


def bench_one(net: nn.Module, da: int, cond_dim: int, reps: int, row: dict) -> None:
    """Fill row with the forward latencies (and, for Da = 7, params, modules, ops, train step)."""
    if da == 7:
        row["params"] = n_params(net)
        row["modules"] = n_leaf_modules(net)
    net.eval()
    for b in (1, 64):
        x, t, c = torch.randn(b, H, da), torch.rand(b), torch.randn(b, cond_dim)
        with torch.inference_mode():
            if da == 7 and b == 1:
                row["ops"] = count_ops(lambda: net(x, t, c))  # noqa: B023
            row[f"ms_b{b}_da{da}"], row[f"median_ms_b{b}_da{da}"] = time_ms(lambda: net(x, t, c), reps)  # noqa: B023
    if da == 7:
        net.train()
        x, t, c = torch.randn(64, H, da), torch.rand(64), torch.randn(64, cond_dim)

        def step():
            net.zero_grad(set_to_none=True)
            net(x, t, c).square().mean().backward()

        row["train_ms_b64_da7"], row["median_train_ms_b64_da7"] = time_ms(step, max(3, reps // 4))


def bench_velocity_nets(reps: int, cond_dim: int) -> list[dict]:
    rows = []
    for name, make in NETS.items():
        row = {"net": name}
        for da in (7, 2):
            torch.manual_seed(0)
            bench_one(make((H, da), cond_dim), da, cond_dim, reps, row)
        rows.append(row)
    return rows


def bench_encoders(reps: int) -> list[dict]:
    shapes = {"agentview_image": (3, 84, 84), "robot0_eye_in_hand_image": (3, 84, 84), "robot0_eef_pos": (3,),
              "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,)}
    cfgs = {
        "resnet18 per-camera": ObsEncoderConfig(),
        "resnet18 shared": ObsEncoderConfig(share_rgb_model=True),
        "small_cnn per-camera": ObsEncoderConfig(backbone="small_cnn"),
    }
    rows = []
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        enc = ObsEncoder(cfg, shapes, n_obs_steps=2).eval()
        row = {"encoder": name, "params": n_params(enc), "output_dim": enc.output_dim}
        for b in (1, 64):
            obs = {k: torch.rand(b, 2, *s) for k, s in shapes.items()}
            with torch.inference_mode():
                n = reps if b == 1 else max(3, reps // 5)
                row[f"ms_b{b}"], row[f"median_ms_b{b}"] = time_ms(lambda: enc(obs), n, warmup=1)  # noqa: B023
        rows.append(row)
    return rows


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cond-dim", type=int, default=64)
    ap.add_argument("--no-encoders", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    nets = bench_velocity_nets(args.reps, args.cond_dim)
    encs = [] if args.no_encoders else bench_encoders(args.reps)
    env = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "threads": args.threads, "cond_dim": args.cond_dim, "H": H,
           "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}

    print(f"velocity nets, one forward (NFE = 1), H = {H}, Dc = {args.cond_dim}, {env}\n")
    print("| net | params (Da=7) | leaf modules | ATen ops / fwd | B=1 Da=7 | B=64 Da=7 | B=1 Da=2 "
          "| B=64 Da=2 | train fwd+bwd B=64 Da=7 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in nets:
        print(f"| {r['net']} | {fmt_params(r['params'])} | {r['modules']} | {r['ops']} "
              f"| {r['ms_b1_da7']:.2f} ms | {r['ms_b64_da7']:.2f} ms | {r['ms_b1_da2']:.2f} ms "
              f"| {r['ms_b64_da2']:.2f} ms "
              f"| {r['train_ms_b64_da7']:.1f} ms |")
    if encs:
        print("\nobservation encoders: 2 cameras 84x84 (center crop 76), 9 low-dim values, To = 2, "
              "eval mode")
        print("| encoder | params | output dim | B=1 | B=64 |")
        print("|---|---:|---:|---:|---:|")
        for r in encs:
            print(f"| {r['encoder']} | {fmt_params(r['params'])} | {r['output_dim']} | {r['ms_b1']:.1f} ms "
                  f"| {r['ms_b64']:.0f} ms |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "velocity_nets": nets, "encoders": encs}, f, indent=2)


if __name__ == "__main__":
    main()
