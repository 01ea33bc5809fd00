#!/usr/bin/env python
"""Write small LeRobotDataset folders with LeRobot's OWN writer, as test fixtures.

Runs inside a throwaway environment that has lerobot installed (never the project
venv), see README.md next to this file:

    /work/lerobot_env/v30/bin/python scripts/lerobot_fixtures/make_fixtures.py   # lerobot 0.6.1 -> v3.0
    /work/lerobot_env/v21/bin/python scripts/lerobot_fixtures/make_fixtures.py   # lerobot 0.3.3 -> v2.1

The lerobot version is detected at run time; the format version written is read
back from meta/info.json ("codebase_version") and selects the output folder
tests/fixtures/lerobot/<v30|v21>/<name>/ (the dataset `root` itself).

Fixtures:
  lowdim: 3 episodes (12, 9, 15 frames), observation.state float32 (4,),
          action float32 (2,), tasks "pick up the cube" / "push the block" /
          "pick up the cube", fps 10, no cameras.
  video:  2 episodes (10, 8 frames), observation.state float32 (3,),
          action float32 (2,), camera observation.images.front (24, 32, 3) stored
          as video, tasks "open the drawer" / "close the drawer", fps 10.

Next to each dataset (in the same folder, beside meta/ data/ videos/):
  expected.json            every frame as LeRobot's reader returns it
  frames_written.npy       (video only) uint8 (N, H, W, 3) frames given to add_frame
  frames_lerobot.npy       (video only) uint8 (N, H, W, 3) frames LeRobot's reader
                           returned (float CHW in [0, 1] -> round(x * 255) -> HWC)

No downloads, no hub push: HF_HUB_OFFLINE is forced and HF_HOME / HF_LEROBOT_HOME
point into a temporary directory.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version as pkg_version
from pathlib import Path

# LeRobot builds some metadata (e.g. the key order of meta/stats.json in v3.0) by iterating
# over sets of strings, whose order depends on str hash randomization: pin it so that
# re-running this script reproduces the fixtures byte for byte.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

# Must be set before lerobot / huggingface_hub / datasets are imported.
_TMP_HOME = Path(tempfile.mkdtemp(prefix="lerobot_fixtures_hf_"))
atexit.register(shutil.rmtree, _TMP_HOME, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", str(_TMP_HOME / "hf_home"))
os.environ.setdefault("HF_LEROBOT_HOME", str(_TMP_HOME / "lerobot_home"))
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:  # lerobot >= 0.3
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
except ImportError:  # pragma: no cover - older layout
    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "lerobot"

LEROBOT_VERSION = pkg_version("lerobot")
_LR_MAJOR_MINOR = tuple(int(x) for x in LEROBOT_VERSION.split(".")[:2])
# lerobot >= 0.4 writes format v3.0: add_frame takes "task" inside the frame dict
# and the dataset must be finalize()d. lerobot 0.3.x writes v2.1: add_frame(frame, task).
IS_V3_WRITER = _LR_MAJOR_MINOR >= (0, 4)

FPS = 10
H, W = 24, 32
CAM = "observation.images.front"

FIXTURES = {
    "lowdim": {
        "seed": 1234,
        "state_dim": 4,
        "action_dim": 2,
        "episodes": [
            (12, "pick up the cube"),
            (9, "push the block"),
            (15, "pick up the cube"),
        ],
        "video": False,
    },
    "video": {
        "seed": 5678,
        "state_dim": 3,
        "action_dim": 2,
        "episodes": [
            (10, "open the drawer"),
            (8, "close the drawer"),
        ],
        "video": True,
    },
    # The camera as dtype "image": PNG bytes inside the data Parquet (use_videos=False), lossless.
    "image": {
        "seed": 91011,
        "state_dim": 3,
        "action_dim": 2,
        "episodes": [
            (6, "stack the cups"),
            (5, "unstack the cups"),
        ],
        "video": True,
        "camera_dtype": "image",
    },
}


def video_backend_for_reading() -> str:
    """Torchcodec needs system FFmpeg shared libraries; fall back to PyAV without them.

    (lerobot 0.6.1 falls back by itself, lerobot 0.3.3 would crash, so pass it explicitly.)
    """
    try:
        import torchcodec.decoders  # noqa: F401

        return "torchcodec"
    except Exception:
        return "pyav"


def make_features(spec: dict) -> dict:
    """The LeRobot feature spec of one fixture."""
    feats = {
        "observation.state": {
            "dtype": "float32",
            "shape": (spec["state_dim"],),
            "names": [f"state_{i}" for i in range(spec["state_dim"])],
        },
        "action": {
            "dtype": "float32",
            "shape": (spec["action_dim"],),
            "names": [f"action_{i}" for i in range(spec["action_dim"])],
        },
    }
    if spec["video"]:
        feats[CAM] = {
            "dtype": spec.get("camera_dtype", "video"),
            "shape": (H, W, 3),
            "names": ["height", "width", "channels"],
        }
    return feats


def synth_frame(episode: int, t: int) -> np.ndarray:
    """Smooth uint8 HWC image: colour gradients that drift with t plus a soft-edged moving square.

    Everything is low-frequency (no hard edges, moderate saturation) so that LeRobot's
    lossy default encoding (yuv420p, 2x2 chroma subsampling) stays close to the input.
    """
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 60 + 120 * (xx / (W - 1)) + 3 * t
    g = 60 + 110 * (yy / (H - 1)) + 15 * episode
    b = 110 + 40 * np.sin(2 * np.pi * (xx + yy + 2 * t) / 64.0)
    img = np.stack([r, g, b], axis=-1)
    # Square of half-size ~4 px moving diagonally, edges ramped over ~6 px.
    cx = 8 + 1.5 * t + 3 * episode
    cy = 7 + 1.0 * t
    d = np.maximum(np.abs(xx - cx), np.abs(yy - cy))
    mask = np.clip((7.0 - d) / 6.0, 0.0, 1.0)[..., None] ** 1.5
    square = np.array([200.0, 190.0, 90.0])
    img = img * (1 - mask) + square * mask
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def generate(spec: dict) -> list[dict]:
    """Deterministic per-episode arrays (numpy seeded)."""
    rng = np.random.default_rng(spec["seed"])
    episodes = []
    for ep, (length, task) in enumerate(spec["episodes"]):
        t = np.arange(length, dtype=np.float64)[:, None]
        sd, ad = spec["state_dim"], spec["action_dim"]
        phase = rng.uniform(0, 2 * np.pi, size=(1, sd))
        state = np.sin(0.3 * t + phase) + 0.05 * rng.standard_normal((length, sd))
        action = np.cos(0.2 * t + rng.uniform(0, 2 * np.pi, size=(1, ad))) + 0.05 * rng.standard_normal(
            (length, ad)
        )
        frames = np.stack([synth_frame(ep, i) for i in range(length)]) if spec["video"] else None
        episodes.append(
            {
                "task": task,
                "state": state.astype(np.float32),
                "action": action.astype(np.float32),
                "frames": frames,
            }
        )
    return episodes


def write_dataset(name: str, spec: dict, root: Path, episodes: list[dict]) -> None:
    """Write one fixture folder with LeRobot's own writer."""
    ds = LeRobotDataset.create(
        repo_id=f"lfm_policy/fixture_{name}",
        root=root,
        fps=FPS,
        features=make_features(spec),
        use_videos=spec["video"] and spec.get("camera_dtype", "video") == "video",
    )
    for ep in episodes:
        for i in range(len(ep["state"])):
            frame = {
                "observation.state": ep["state"][i].copy(),
                "action": ep["action"][i].copy(),
            }
            if spec["video"]:
                frame[CAM] = ep["frames"][i].copy()
            if IS_V3_WRITER:
                frame["task"] = ep["task"]
                ds.add_frame(frame)
            else:
                ds.add_frame(frame, task=ep["task"])
        ds.save_episode()
    if hasattr(ds, "finalize"):
        ds.finalize()  # required for v3.0 (closes parquet writers, flushes meta/episodes)
    if hasattr(ds, "stop_image_writer"):
        ds.stop_image_writer()
    del ds


def _scalar(v):
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    elif isinstance(v, np.generic):
        v = v.item()
    return v


def to_uint8_hwc(img) -> np.ndarray:
    """A frame as LeRobot's reader returns it, converted to uint8 (H, W, C)."""
    if isinstance(img, torch.Tensor):
        img = img.numpy()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = np.transpose(img, (1, 2, 0))
    return np.ascontiguousarray(img)


def read_back(name: str, spec: dict, root: Path, episodes: list[dict]) -> None:
    """Read the fixture with LeRobot's reader and store what it returns (expected.json, frames_lerobot.npy)."""
    backend = video_backend_for_reading()
    ds = LeRobotDataset(f"lfm_policy/fixture_{name}", root=root, video_backend=backend)
    info = json.loads((root / "meta" / "info.json").read_text())
    n = len(ds)
    expected_n = sum(len(e["state"]) for e in episodes)
    assert n == expected_n, (n, expected_n)

    written_state = np.concatenate([e["state"] for e in episodes])
    written_action = np.concatenate([e["action"] for e in episodes])
    written_tasks = [e["task"] for e in episodes for _ in range(len(e["state"]))]

    frames_out = []
    decoded = []
    for idx in range(n):
        item = ds[idx]
        state = item["observation.state"].numpy()
        action = item["action"].numpy()
        assert state.dtype == np.float32 and action.dtype == np.float32
        # The reader must hand back exactly what was written.
        assert np.array_equal(state, written_state[idx]), idx
        assert np.array_equal(action, written_action[idx]), idx
        assert item["task"] == written_tasks[idx], idx
        rec = {
            "index": _scalar(item["index"]),
            "episode_index": _scalar(item["episode_index"]),
            "frame_index": _scalar(item["frame_index"]),
            "timestamp": _scalar(item["timestamp"]),
            "task_index": _scalar(item["task_index"]),
            "task": item["task"],
            # float32 -> python float (float64) is exact; json repr round-trips exactly.
            "observation.state": [float(x) for x in state],
            "action": [float(x) for x in action],
        }
        if spec["video"]:
            img = item[CAM]
            rec[f"{CAM}.shape"] = list(img.shape)
            rec[f"{CAM}.dtype"] = str(img.dtype).replace("torch.", "")
            decoded.append(to_uint8_hwc(img))
        frames_out.append(rec)

    out = {
        "generator": "scripts/lerobot_fixtures/make_fixtures.py",
        "lerobot_version": LEROBOT_VERSION,
        "codebase_version": info["codebase_version"],
        "fps": info["fps"],
        "num_episodes": ds.num_episodes,
        "num_frames": n,
        "episode_lengths": [len(e["state"]) for e in episodes],
        "tasks": sorted(set(written_tasks), key=written_tasks.index),
        "features": {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in info["features"].items()},
        "video_backend_used_for_reading": backend if spec["video"] else None,
        "frames": frames_out,
    }
    if spec["video"]:
        written = np.concatenate([e["frames"] for e in episodes])
        dec = np.stack(decoded)
        assert dec.shape == written.shape, (dec.shape, written.shape)
        np.save(root / "frames_written.npy", written)
        np.save(root / "frames_lerobot.npy", dec)
        diff = np.abs(dec.astype(np.int16) - written.astype(np.int16))
        out["frames_written_file"] = "frames_written.npy"
        out["frames_lerobot_file"] = "frames_lerobot.npy"
        out["lerobot_vs_written_abs_diff"] = {"max": int(diff.max()), "mean": float(diff.mean())}
        print(f"  [{name}] decoded vs written |diff|: max={diff.max()} mean={diff.mean():.3f}")
    (root / "expected.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> int:
    """Write every fixture for the installed LeRobot version."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="parent of v30/ and v21/ (default: %(default)s)")
    ap.add_argument("--only", choices=sorted(FIXTURES), action="append", help="fixture(s) to write")
    args = ap.parse_args()

    names = args.only or list(FIXTURES)
    print(f"lerobot {LEROBOT_VERSION} (v3 writer: {IS_V3_WRITER}), torch {torch.__version__}, numpy {np.__version__}")
    try:
        for name in names:
            spec = FIXTURES[name]
            episodes = generate(spec)
            # Write into a scratch folder first (create() refuses an existing root),
            # then move it into place under the detected format version.
            scratch = _TMP_HOME / "out" / name
            write_dataset(name, spec, scratch, episodes)
            cv = json.loads((scratch / "meta" / "info.json").read_text())["codebase_version"]
            dest = args.out / cv.replace(".", "") / name
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(scratch), str(dest))
            # Both writers leave an empty images/<camera>/ folder (PNG staging area) after encoding; drop empty dirs.
            for p in sorted(dest.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
            read_back(name, spec, dest, episodes)
            print(f"  [{name}] {cv} -> {dest}")
    finally:
        shutil.rmtree(_TMP_HOME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
