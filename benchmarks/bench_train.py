"""Training and inference speed of each head on the shipped configs (synthetic batches, no dataset).

For every (config, head): optimizer steps/s of the first and the last training stage (the last LFM
stage also pushes each batch through the frozen earlier blocks), chunk latency at batch 1 with the
config's sampling solver, NFE, and the peak memory of the process (max RSS on CPU, max allocated on
CUDA). Each measurement runs in a fresh process so peak memory is its own.

    python benchmarks/bench_train.py                                  # CPU, low-dim + image configs
    python benchmarks/bench_train.py --device cuda --batch-image 64   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ROBOSUITE_LOWDIM = {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,)}
SHAPES = {  # per-frame observation shapes of the tasks the configs are for (as the envs give them)
    "metaworld_lowdim": ({"state": (39,)}, 4),
    "metaworld_lowdim_cpu": ({"state": (39,)}, 4),
    "metaworld_image": ({"corner2_image": (84, 84, 3), "state": (39,)}, 4),
    "robosuite_lowdim": ({**_ROBOSUITE_LOWDIM, "object": (10,)}, 7),
    "robosuite_lowdim_cpu": ({**_ROBOSUITE_LOWDIM, "object": (10,)}, 7),
    "robosuite_image": ({"agentview_image": (84, 84, 3), "robot0_eye_in_hand_image": (84, 84, 3),
                         **_ROBOSUITE_LOWDIM}, 7),
}


def measure(config_name: str, kind: str, batch: int, steps: int, device: str, threads: int, queue) -> None:
    import numpy as np
    import torch

    from lfm_policy import Policy, PolicySpec
    from lfm_policy.normalizer import LinearNormalizer
    from lfm_policy.train import TrainConfig

    torch.set_num_threads(threads)
    cfg = TrainConfig.from_json(ROOT / "configs" / f"{config_name}.json").with_overrides([f"policy.head.kind={kind}"])
    shapes, da = SHAPES[config_name]
    image_keys = tuple(k for k in shapes if k.endswith("_image"))
    stats = {k: {"min": -np.ones(s), "max": np.ones(s)} for k, s in shapes.items() if k not in image_keys}
    stats["action"] = {"min": -np.ones(da), "max": np.ones(da)}
    policy = Policy(cfg.policy, PolicySpec(obs_shapes=shapes, image_keys=image_keys, action_dim=da),
                    LinearNormalizer.from_stats(stats)).to(device)
    to, h = cfg.policy.n_obs_steps, cfg.policy.horizon

    def make_obs(b):
        return {k: (torch.randint(0, 256, (b, to, *s), dtype=torch.uint8, device=device) if k in image_keys
                    else torch.rand(b, to, *s, device=device)) for k, s in shapes.items()}

    batch_dict = {"obs": make_obs(batch), "action": torch.rand(batch, h, da, device=device) * 2 - 1,
                  "action_is_pad": torch.zeros(batch, h, dtype=torch.bool, device=device)}
    n = policy.head.n_stages
    out = {"config": config_name, "head": kind, "batch": batch, "device": device,
           "params": policy.num_trained_params()}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for label, stage in (("first", 0), ("last", n - 1)):
        for s in range(stage + 1):  # make earlier blocks "trained" so the last stage pushes through them
            policy.begin_stage(s)
            if s < stage:
                policy.end_stage(s)
        params = policy.stage_parameters(stage)
        opt = torch.optim.AdamW(params, lr=1e-4)
        autocast = device.startswith("cuda")
        for i in range(steps + 2):  # 2 warm-up steps
            if i == 2:
                sync()
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = policy(batch_dict, stage=stage)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            policy.after_step(stage)
        sync()
        out[f"steps_per_s_{label}_stage"] = steps / (time.perf_counter() - t0)
        if n == 1:
            out["steps_per_s_last_stage"] = out["steps_per_s_first_stage"]
            break
    policy.end_stage(n - 1)
    policy.eval()
    obs1 = make_obs(1)
    lat = []
    for i in range(12):
        sync()
        t0 = time.perf_counter()
        policy.predict_action_chunk(obs1)
        sync()
        if i >= 2:
            lat.append(time.perf_counter() - t0)
    out["chunk_ms_b1"] = 1e3 * sorted(lat)[len(lat) // 2]
    out["nfe"] = policy.nfe()
    out["peak_mem_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["metaworld_lowdim", "robosuite_image"], choices=list(SHAPES))
    p.add_argument("--config-batch", action="store_true", help="each config's own batch_size (overrides --batch-*)")
    p.add_argument("--heads", nargs="+", default=["lfm", "fm", "diffusion", "regression"])
    p.add_argument("--batch-lowdim", type=int, default=256)
    p.add_argument("--batch-image", type=int, default=16)
    p.add_argument("--steps-lowdim", type=int, default=10)
    p.add_argument("--steps-image", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for config in args.configs:
        image = "image" in config
        batch = args.batch_image if image else args.batch_lowdim
        if args.config_batch:
            import lfm_policy.train_config as tc

            batch = tc.TrainConfig.from_json(ROOT / "configs" / f"{config}.json").batch_size
        for kind in args.heads:
            q = ctx.Queue()
            proc = ctx.Process(target=measure, args=(config, kind, batch,
                                                     args.steps_image if image else args.steps_lowdim, args.device,
                                                     args.threads, q))
            proc.start()
            row = q.get()
            proc.join()
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| config | head | params | batch | train steps/s (first / last stage) | chunk ms (B=1) | NFE | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['head']} | {r['params'] / 1e6:.1f}M | {r['batch']} | "
              f"{r['steps_per_s_first_stage']:.2f} / {r['steps_per_s_last_stage']:.2f} | {r['chunk_ms_b1']:.1f} | "
              f"{r['nfe']} | {r['peak_mem_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
