"""What format-2 integrity costs: writing and reading a replay buffer v1-style (Blosc only) vs v2 (Blosc + crc32c).

Writes the same synthetic buffer in both formats, episode by episode through ``ReplayBuffer.create``, in
a temporary directory: 100 episodes of ~120 steps with "state" (19,) float32, action (7,) float32 and
two uint8 84x84x3 cameras (smooth moving gradients, which compress like rendered scenes).

  v1  format 1's array options swapped in: Blosc/zstd only, chunks of zeros skipped
  v2  as ReplayBuffer.create writes now: Blosc/zstd + Crc32cCodec, every chunk stored

The writes alternate (v1, v2, v1, v2, ...; best kept) and then, for each: ``ReplayBuffer.open`` (incl.
the missing-chunk check), ``copy_to_memory`` (what training does), reading every episode with
``get_episode``, and ``check_store`` (``lfm-policy data check``: every chunk read and verified) are
timed, each repeated ``--repeats`` times (best kept).

    .venv/bin/python benchmarks/bench_buffer_io.py [--episodes 100] [--length 120] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_dataloader import _smooth_images

from lfm_policy.datasets import zarr_backend
from lfm_policy.datasets.buffer_backends import compressor_for
from lfm_policy.datasets.integrity import check_store
from lfm_policy.datasets.replay_buffer import ReplayBuffer


def episodes(n: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        t = int(length + rng.integers(-length // 4, length // 4 + 1))
        yield {"action": rng.uniform(-1, 1, size=(t, 7)).astype(np.float32),
               "state": rng.normal(size=(t, 19)).astype(np.float32),
               "agentview_image": _smooth_images(rng, t), "wrist_image": _smooth_images(rng, t)}


def _v1_options(dtype, version):
    """Format 1's array options: Blosc only, zarr's default write_empty_chunks (False)."""
    return {"compressors": [compressor_for(dtype)], "fill_value": 0}


def write(path: Path, fmt: str, eps) -> None:
    """Write through ReplayBuffer.create; ``fmt="v1"`` swaps in format 1's codecs and empty-chunk policy."""
    saved = zarr_backend.array_options, zarr_backend._EMPTY_OK
    if fmt == "v1":
        zarr_backend.array_options, zarr_backend._EMPTY_OK = _v1_options, {"write_empty_chunks": False}
    try:
        with ReplayBuffer.create(path, atomic=True) as buf:
            for ep in eps:
                buf.add_episode(ep)
    finally:
        zarr_backend.array_options, zarr_backend._EMPTY_OK = saved


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--length", type=int, default=120, help="mean episode length")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each read (best kept)")
    parser.add_argument("--write-repeats", type=int, default=2, help="interleaved writes per format (best kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    results = {"config": {"episodes": args.episodes, "mean_length": args.length, "cpus": os.cpu_count(),
                          "load_avg": os.getloadavg()[0]}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        writes = {"v1": [], "v2": []}
        for _ in range(args.write_repeats):  # interleaved, so that load changes hit both alike
            for name in ("v1", "v2"):
                path = Path(tmp) / f"{name}.zarr"
                shutil.rmtree(path, ignore_errors=True)
                t0 = time.perf_counter()
                write(path, name, episodes(args.episodes, args.length))
                writes[name].append(time.perf_counter() - t0)
        for name in ("v1", "v2"):
            path = Path(tmp) / f"{name}.zarr"
            buf = ReplayBuffer.open(path)
            files = [f for f in path.rglob("*") if f.is_file()]
            run = {"format": name, "checksummed": buf.checksummed,
                   "n_steps": buf.n_steps, "size_mb": sum(f.stat().st_size for f in files) / 1e6,
                   "files": len(files), "write_s": min(writes[name]),
                   "open_s": best(lambda p=path: ReplayBuffer.open(p), args.repeats),
                   "copy_to_memory_s": best(buf.copy_to_memory, args.repeats),
                   "get_episode_all_s": best(lambda b=buf: [b.get_episode(i) for i in range(b.n_episodes)],
                                             args.repeats),
                   "check_s": best(lambda p=path: check_store(p), args.repeats)}
            print(f"[{name}] {run['n_steps']} steps, {run['size_mb']:.1f} MB in {run['files']} files; "
                  f"write {run['write_s']:.2f} s, open {run['open_s'] * 1000:.1f} ms, copy_to_memory "
                  f"{run['copy_to_memory_s']:.2f} s, get_episode x{buf.n_episodes} {run['get_episode_all_s']:.2f} s, "
                  f"check {run['check_s']:.2f} s", flush=True)
            results["runs"].append(run)
        results["config"]["load_avg_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
