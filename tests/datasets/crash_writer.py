"""Writer process killed by test_replay_buffer.py's crash tests.

Usage: python crash_writer.py PATH create|append|stage|hold MARKER N_SMALL BIG_STEPS [STAGING]

Writes N_SMALL small episodes (seeded, so the test can rebuild them), touches MARKER, then starts a big
episode of BIG_STEPS frames (thousands of chunk files) and sleeps: the test kills it while that
episode is being written. ``create`` makes a new buffer (published at its first episode), ``append``
opens PATH with mode "a", ``stage`` creates an atomic buffer built in STAGING (published on close),
``hold`` creates an atomic buffer in the default staging directory, writes the small episodes, sets
MARKER to "holding" and sleeps with the buffer open (a live writer holding its lock).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lfm_policy.datasets.replay_buffer import ReplayBuffer


def small_episode(i: int) -> dict:
    rng = np.random.default_rng(100 + i)
    t = 5 + i
    return {
        "action": rng.normal(size=(t, 3)).astype(np.float32),
        "camera": rng.integers(0, 256, size=(t, 8, 8, 3), dtype=np.uint8),
        "state": rng.normal(size=(t, 4)).astype(np.float32),
    }


def set_marker(marker: str, text: str) -> None:
    """Atomic, so the test never reads a half-written marker."""
    Path(marker + ".new").write_text(text)
    os.replace(marker + ".new", marker)


def start_writer(path: Path, mode: str, n_small: int, big_steps: int, tmp_path: Path, staging: Path | None = None,
                 wait_for: str = "writing") -> tuple[subprocess.Popen, Path]:
    """Start this script and wait until its marker says ``wait_for``; return the process and the marker."""
    marker = tmp_path / f"marker-{mode}-{path.name}"
    marker.unlink(missing_ok=True)
    argv = [sys.executable, __file__, str(path), mode, str(marker), str(n_small), str(big_steps)]
    proc = subprocess.Popen(argv + ([str(staging)] if staging else []), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text() == wait_for):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    return proc, marker


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL and reap."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run_until_killed(path: Path, mode: str, n_small: int, big_steps: int, tmp_path: Path,
                     staging: Path | None = None) -> None:
    """Start this script, wait until it writes the big episode's rows, then SIGKILL it."""
    proc, marker = start_writer(path, mode, n_small, big_steps, tmp_path, staging)

    def chunk_files():
        root = next(tmp_path.glob(f"{path.name}*"), None)
        cam = root / "data" / "camera" / "c" if root else None
        return sum(len(f) for _, _, f in os.walk(cam)) if cam and cam.exists() else 0

    before = chunk_files()
    while chunk_files() < before + 20 and marker.read_text() == "writing":
        time.sleep(0.001)
    kill(proc)
    assert marker.read_text() == "writing", "the writer finished before it could be killed"


def main() -> None:
    path, mode, marker, n_small, big_steps = sys.argv[1:6]
    if mode == "create":
        buf = ReplayBuffer.create(path, attrs={"task": "crash"})
    elif mode == "stage":
        buf = ReplayBuffer.create(path, attrs={"task": "crash"}, atomic=True, staging=sys.argv[6])
    elif mode == "hold":
        buf = ReplayBuffer.create(path, attrs={"task": "crash"}, atomic=True)
    else:
        buf = ReplayBuffer.open(path, "a")
    start = buf.n_episodes
    for i in range(start, start + int(n_small)):
        buf.add_episode(small_episode(i), episode_attrs={"seed": i})
    if mode == "hold":
        set_marker(marker, "holding")
        time.sleep(120)
        return
    n = int(big_steps)
    rng = np.random.default_rng(7)
    big = {
        "action": np.ones((n, 3), dtype=np.float32),
        "camera": rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8),
        "state": np.ones((n, 4), dtype=np.float32),
    }
    set_marker(marker, "writing")
    buf.add_episode(big, episode_attrs={"seed": -1})
    set_marker(marker, "committed")
    time.sleep(120)


if __name__ == "__main__":
    main()
