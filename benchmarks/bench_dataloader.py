"""DataLoader throughput of SequenceDataset: batches/s and ms per batch.

Writes its own synthetic replay buffers (zarr, in a temporary directory), opens them the way training
does (copied into memory) and times ``torch.utils.data.DataLoader`` over them:

  (a) low-dim: obs "state" (19,) + action (7,)
  (b) images: two uint8 84x84x3 cameras + "state" (9,) + action (7,)

with To = 2, H = 16, Ta = 8, batch 64, shuffle, num_workers in {0, 1, 2}, for two loaders:

  standard  DataLoader(ds, batch_size=64, shuffle=True)   (uses SequenceDataset.__getitems__)
  batched   ds.make_loader(64)                            (one vectorized gather per key, no re-stacking)

The first batches (worker start-up) are excluded. Batches hold uint8 images; the float conversion the
trainer does on its device (``images_to_float``) is timed separately, on this CPU.

    .venv/bin/python benchmarks/bench_dataloader.py [--batches 300] [--workers 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.torch_dataset import SequenceDataset, images_to_float

TO, H, TA, BATCH = 2, 16, 8, 64


def _smooth_images(rng: np.random.Generator, t: int) -> np.ndarray:
    """(t, 84, 84, 3) uint8 frames with moving gradients (compress like rendered scenes, not like noise)."""
    yy, xx = np.mgrid[0:84, 0:84].astype(np.float32)
    base = (xx / 9.0 + yy / 13.0)[None, :, :, None]  # (1, 84, 84, 1)
    shift = rng.uniform(0, 6.28, size=3)[None, None, None, :] + 0.1 * np.arange(t)[:, None, None, None]
    return (127 + 120 * np.sin(base + shift)).astype(np.uint8)


def write_buffer(path: Path, kind: str, n_episodes: int, length: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with ReplayBuffer.create(path, atomic=True) as buf:
        for _ in range(n_episodes):
            t = int(length + rng.integers(-length // 4, length // 4 + 1))
            ep = {"action": rng.uniform(-1, 1, size=(t, 7)).astype(np.float32)}
            if kind == "lowdim":
                ep["state"] = rng.normal(size=(t, 19)).astype(np.float32)
            else:
                ep["state"] = rng.normal(size=(t, 9)).astype(np.float32)
                ep["agentview_image"] = _smooth_images(rng, t)
                ep["wrist_image"] = _smooth_images(rng, t)
            buf.add_episode(ep)
    return time.perf_counter() - t0


def time_loader(ds: SequenceDataset, style: str, workers: int, n_batches: int, warmup: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    if style == "standard":
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0, generator=gen)
    else:
        loader = ds.make_loader(BATCH, num_workers=workers, generator=gen, persistent_workers=workers > 0)
    it = iter(loader)
    t_start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t_first = time.perf_counter() - t_start
    t0 = time.perf_counter()
    done = 0
    while done < n_batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    dt = time.perf_counter() - t0
    out = {"loader": style, "workers": workers, "batches_per_s": done / dt, "ms_per_batch": 1000 * dt / done,
           "samples_per_s": done * BATCH / dt, "startup_s": t_first}
    if ds.image_keys:  # the uint8 -> float CHW conversion the trainer runs on its device (timed here on CPU)
        t0 = time.perf_counter()
        for _ in range(20):
            images_to_float(batch["obs"], ds.image_keys)
        out["images_to_float_cpu_ms"] = 1000 * (time.perf_counter() - t0) / 20
    del it, loader
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100, help="episodes per synthetic buffer")
    parser.add_argument("--length", type=int, default=120, help="mean episode length")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    results = {"config": {"To": TO, "H": H, "Ta": TA, "batch": BATCH, "episodes": args.episodes,
                          "mean_length": args.length, "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()},
               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("lowdim", "images"):
            path = Path(tmp) / f"{kind}.zarr"
            write_s = write_buffer(path, kind, args.episodes, args.length)
            t0 = time.perf_counter()
            obs_keys = ["state"] if kind == "lowdim" else ["agentview_image", "wrist_image", "state"]
            ds = SequenceDataset(path, obs_keys=obs_keys, n_obs_steps=TO, horizon=H, n_action_steps=TA)
            load_s = time.perf_counter() - t0
            size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
            print(f"[{kind}] {ds.buffer.n_episodes} episodes, {ds.buffer.n_steps} steps, {len(ds)} windows; "
                  f"zarr {size_mb:.1f} MB written in {write_s:.1f} s, loaded into memory in {load_s:.2f} s")
            for style in ("standard", "batched"):
                for w in args.workers:
                    r = time_loader(ds, style, w, args.batches, args.warmup)
                    r.update(kind=kind, zarr_mb=round(size_mb, 1), write_s=round(write_s, 2), load_s=round(load_s, 2))
                    results["runs"].append(r)
                    extra = (f", images_to_float on CPU {r['images_to_float_cpu_ms']:.1f} ms"
                             if "images_to_float_cpu_ms" in r else "")
                    print(f"  {style:<8} num_workers={w}: {r['batches_per_s']:8.1f} batches/s  "
                          f"{r['ms_per_batch']:7.2f} ms/batch  {r['samples_per_s']:9.0f} samples/s  "
                          f"(start-up {r['startup_s']:.2f} s{extra})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
