"""Decoding LeRobot camera streams: PyAV against torchcodec, frames per second on this machine.

Writes one v3.0-style MP4 per size (``--episodes`` episodes of ``--length`` smooth synthetic frames back
to back, AV1 ``yuv420p``, GOP 2, CRF 30: LeRobot's writer defaults, through our
:func:`~lfm_policy.datasets.lerobot_video.encode_video`) and times, per size:

  pyav window   our importer's path: :func:`decode_window` once per episode (seek + decode, one
                reused swscale context for the YUV → RGB conversion)
  pyav naive    one sequential pass over the file with ``frame.to_ndarray(format="rgb24")``, which
                builds a new swscale context for every frame (the common idiom)
  torchcodec    ``VideoDecoder(path).get_frames_played_in_range(start, stop)`` once per episode
                (``seek_mode="exact"``, CPU), converted to uint8 HWC numpy like the others

Every method returns the same uint8 (T, H, W, 3) frames (checked). torchcodec needs FFmpeg's shared
libraries (libavutil.so.N, ...) on the library path; there is no system FFmpeg here, so the script
re-runs itself with ``LD_LIBRARY_PATH`` pointing at symlinks to the FFmpeg that PyAV bundles
(``av.libs``), which torchcodec accepts (FFmpeg 4–8).

    .venv/bin/python benchmarks/bench_lerobot_decode.py [--sizes 96 224] [--episodes 20] [--length 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lfm_policy.datasets.lerobot_video import decode_window, encode_video

FPS = 10


def _frames(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8: gradients and a moving square (compress like rendered scenes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.uint8)
    phase = rng.uniform(0, 1, 3)
    for t in range(n):
        img = np.stack([xx + 0.01 * t + phase[0], yy + phase[1], (xx + yy) / 2 + phase[2]], -1) % 1.0
        c = int((0.5 + 0.4 * np.sin(t / 7)) * size)
        img[max(0, c - size // 8): c + size // 8, size // 3: size // 3 + size // 6] = (1.0, 0.2, 0.1)
        out[t] = (img * 255).astype(np.uint8)
    return out


def _ffmpeg_dir() -> Path:
    """A directory of ``libavutil.so.N``-style symlinks to PyAV's bundled FFmpeg libraries."""
    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    out = Path(tempfile.gettempdir()) / "lfm_policy_ffmpeg_libs"
    out.mkdir(exist_ok=True)
    for f in libs.glob("lib*.so*"):
        m = re.match(r"(lib(?:av\w+|sw\w+|postproc))-[0-9a-f]+\.so\.(\d+)", f.name)
        if m and not (out / f"{m.group(1)}.so.{m.group(2)}").exists():
            (out / f"{m.group(1)}.so.{m.group(2)}").symlink_to(f)
    return out


def _time(fn, reps: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench(size: int, episodes: int, length: int, reps: int, work: Path) -> list[dict]:
    """Time every decoder on one file of ``episodes × length`` frames of ``size`` px."""
    import av

    frames = _frames(episodes * length, size, seed=size)
    path = work / f"cam_{size}.mp4"
    t0 = time.perf_counter()
    encode_video(frames, path, FPS)
    encode_s = time.perf_counter() - t0
    starts = [i * length / FPS for i in range(episodes)]
    n = episodes * length

    def pyav_window():
        return np.concatenate([decode_window(path, s, length, FPS) for s in starts])

    def pyav_file():
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])

    rows = []
    ref = None
    for name, fn in (("pyav window (importer)", pyav_window), ("pyav naive to_ndarray", pyav_file)):
        s, out = _time(fn, reps)
        ref = out if ref is None else ref
        assert out.shape == ref.shape and np.array_equal(out, ref), name
        rows.append({"size": size, "decoder": name, "frames": n, "s": s, "fps": n / s})
    try:
        import torch
        from torchcodec.decoders import VideoDecoder

        torch.set_num_threads(1)

        def tc_window():
            dec = VideoDecoder(str(path), seek_mode="exact", device="cpu")
            out = [dec.get_frames_played_in_range(s, s + length / FPS).data for s in starts]
            return torch.cat(out).permute(0, 2, 3, 1).contiguous().numpy()

        s, out = _time(tc_window, reps)
        same = out.shape == ref.shape and bool(np.array_equal(out, ref))
        diff = float(np.abs(out.astype(int) - ref).max()) if out.shape == ref.shape else None
        rows.append({"size": size, "decoder": "torchcodec window", "frames": n, "s": s, "fps": n / s,
                     "identical_to_pyav": same, "max_abs_diff": diff})
    except Exception as e:  # noqa: BLE001  (not installed or no FFmpeg libraries): reported, not fatal
        rows.append({"size": size, "decoder": "torchcodec window", "error": f"{type(e).__name__}: {e}"[:200]})
    for r in rows:
        r["encode_s"] = encode_s
        r["file_kb"] = path.stat().st_size / 1024
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--reps", type=int, default=3, help="best of REPS")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if "LFM_POLICY_BENCH_REEXEC" not in os.environ:  # give torchcodec PyAV's FFmpeg libraries
        env = {**os.environ, "LFM_POLICY_BENCH_REEXEC": "1", "OMP_NUM_THREADS": "1",
               "LD_LIBRARY_PATH": f"{_ffmpeg_dir()}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))
    import av
    import torch

    versions = {"av": av.__version__, "ffmpeg": av.library_versions.get("libavcodec"), "torch": torch.__version__}
    try:
        import torchcodec

        versions["torchcodec"] = torchcodec.__version__
    except Exception as e:  # noqa: BLE001
        versions["torchcodec"] = f"unavailable ({type(e).__name__})"
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            rows += bench(size, args.episodes, args.length, args.reps, Path(work))
    print(f"versions: {versions}; {os.cpu_count()} CPUs")
    print("| frames | decoder | frames/s | s | file KB | encode s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['size']}² | {r['decoder']} | – ({r['error']}) | | | |")
            continue
        extra = ""
        if "identical_to_pyav" in r:
            extra = " (identical to PyAV)" if r["identical_to_pyav"] else f" (max diff {r['max_abs_diff']})"
        print(f"| {r['size']}² × {r['frames']} | {r['decoder']}{extra} | {r['fps']:.0f} | {r['s']:.2f} | "
              f"{r['file_kb']:.0f} | {r['encode_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
