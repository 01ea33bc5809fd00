"""Writer process killed by test_replay_buffer.py's crash tests.

Usage: python crash_writer.py PATH create|append MARKER N_SMALL BIG_STEPS

Writes N_SMALL small episodes (seeded, so the test can rebuild them), touches MARKER, then starts a big
episode of BIG_STEPS frames (thousands of chunk files) and sleeps: the test kills it while that
episode is being written.
"""

import os
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


def main() -> None:
    path, mode, marker, n_small, big_steps = sys.argv[1:6]
    buf = ReplayBuffer.create(path, attrs={"task": "crash"}) if mode == "create" else ReplayBuffer.open(path, "a")
    start = buf.n_episodes
    for i in range(start, start + int(n_small)):
        buf.add_episode(small_episode(i), episode_attrs={"seed": i})
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
