"""Reset cost, render fidelity and video cost of the simulated tasks (figures in the README).

1. robosuite reset cost, ``hard_reset=True`` (default) vs ``False``, low-dim and with 84 px images:
   median wall time of ``env.reset(seed=s)`` over several seeds, after one warm-up reset.
2. Render fidelity: build a small robomimic dataset with robomimic's own ``dataset_states_to_obs.py``
   (``tests/datasets/robomimic_fixture.py``, two 32 px cameras; then the same states at 84 px), replay
   its states in our env
   (``env.reset_to_state``) with each ``render_settings`` and compare the frames with the stored ones:
   share of pixels with a channel differing by more than 10 levels, mean absolute difference.
3. Render time per agentview frame (84 px, states along a random-action episode) for each setting.
4. Meta-World eval wall time with ``--videos 2``, low-dim policy, with and without ``--images``.

    MUJOCO_GL=egl python benchmarks/bench_env_fidelity.py --out /tmp/bench_fid --json fid.json   # ~4 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def reset_cost(task: str, hard: bool, images: bool, n: int) -> dict:
    from lfm_policy.envs.robosuite_tasks import make_robosuite_env

    env = make_robosuite_env(task, images=images, hard_reset=hard)
    try:
        env.reset(seed=0)
        times = []
        for s in range(1, n + 1):
            t = time.perf_counter()
            env.reset(seed=s)
            times.append(time.perf_counter() - t)
    finally:
        env.close()
    return {"task": task, "hard_reset": hard, "images": images, "median_ms": 1e3 * float(np.median(times)),
            "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times), "n": n}


def fidelity(hdf5: Path) -> list[dict]:
    import h5py

    from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile
    from lfm_policy.envs.robosuite_tasks import make_robosuite_env

    with RobomimicFile(hdf5) as f:
        meta = f.env_meta
    rows = []
    for setting in ("default", "fast"):
        env = make_robosuite_env("Lift", env_meta=meta, images=True, render_settings=setting)
        diffs = []
        try:
            with h5py.File(hdf5) as f:
                for name in sorted(f["data"], key=lambda n: int(n[5:])):
                    g = f["data"][name]
                    states, xml = g["states"][()], g.attrs["model_file"]
                    for t in range(len(states)):
                        obs = env.reset_to_state(states[t], xml if t == 0 else None)
                        for cam in ("agentview_image", "robot0_eye_in_hand_image"):
                            diffs.append(np.abs(obs[cam].astype(int) - g["obs"][cam][t].astype(int)))
        finally:
            env.close()
        d = np.stack(diffs)
        rows.append({"render_settings": setting, "image_size": int(d.shape[1]), "frames": len(diffs),
                     "pct_pixels_gt10": 100 * float((d.max(-1) > 10).mean()), "mean_abs": float(d.mean()),
                     "max_abs": int(d.max())})
    return rows


def obs_at_84px(fixture: Path) -> Path:
    """The fixture's raw states through robomimic's dataset_states_to_obs again, with 84 px cameras."""
    out = fixture / "obs84.hdf5"
    if out.exists():
        return out
    from lfm_policy.envs.robomimic_compat import import_robomimic_env_utils

    import_robomimic_env_utils()
    from robomimic.scripts.dataset_states_to_obs import dataset_states_to_obs

    dataset_states_to_obs(argparse.Namespace(
        dataset=str(fixture / "raw.hdf5"), output_name=out.name, n=None, shaped=False,
        camera_names=["agentview", "robot0_eye_in_hand"], camera_height=84, camera_width=84, done_mode=2,
        copy_rewards=False, copy_dones=False, exclude_next_obs=False, compress=True))
    return out


def render_time(setting: str, images: bool, steps: int = 40) -> dict:
    from lfm_policy.envs.robosuite_tasks import make_robosuite_env

    env = make_robosuite_env("Lift", images=images, hard_reset=False, render_settings=setting)
    rng = np.random.default_rng(0)
    times = []
    try:
        env.reset(seed=0)
        env.render()  # warm-up (makes the low-dim renderer)
        for _ in range(steps):
            env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            t = time.perf_counter()
            env.render()
            times.append(time.perf_counter() - t)
    finally:
        env.close()
    return {"render_settings": setting, "images": images, "image_size": 84,
            "median_ms": 1e3 * float(np.median(times)), "n": steps}


def metaworld_video_cost(out: Path, episodes: int) -> list[dict]:
    from lfm_policy.cli import main as cli_main
    from lfm_policy.train import TrainConfig, train

    data = out / "mw_reach.zarr"
    if not data.exists():
        cli_main(["collect", "--task", "metaworld/reach-v3", "--episodes", "5", "--out", str(data), "--no-progress"])
    cfg = TrainConfig.from_json(ROOT / "configs" / "metaworld_lowdim.json").with_overrides([
        f"data.path={data}", "data.obs_keys=[]", f"out_dir={out / 'mw_run'}", "val_every=100000",
        "checkpoint_every=100000", "data.val_ratio=0", "batch_size=16", "total_steps=30",
        "policy.head.chain.n_blocks=2", "policy.head.net.family=mlp", "policy.head.net.mlp.width=64",
        "policy.head.net.mlp.depth=2"])
    ckpt = train(cfg, progress=False)
    rows = []
    for images in (False, True):
        argv = ["eval", str(ckpt), "--task", "metaworld/reach-v3", "--episodes", str(episodes), "--videos", "2",
                "--out", str(out / f"mw_eval_images{int(images)}"), "--no-progress",
                "--env-arg", "max_episode_steps=150"] + (["--images"] if images else [])
        t = time.perf_counter()
        assert cli_main(argv) == 0
        wall = time.perf_counter() - t
        rec = json.loads((out / f"mw_eval_images{int(images)}" / "results.json").read_text())
        rows.append({"images": images, "episodes": episodes, "videos": 2, "wall_s": wall,
                     "rollout_wall_s": rec["summary"]["wall_s"],
                     "env_steps": sum(e["length"] for e in rec["episodes"]),
                     "videos_written": sum(e["video"] is not None for e in rec["episodes"])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="scratch directory")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--resets", type=int, default=8)
    ap.add_argument("--mw-episodes", type=int, default=6)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixture = out / "robomimic_fixture"
    if not (fixture / "DONE").exists():
        subprocess.run([sys.executable, str(ROOT / "tests" / "datasets" / "robomimic_fixture.py"), str(fixture)],
                       check=True, capture_output=True)
    res = {"reset": [reset_cost(task, hard, images, args.resets) for task in ("Lift", "NutAssemblySquare")
                     for hard in (True, False) for images in (False, True)],
           "fidelity": fidelity(fixture / "obs.hdf5") + fidelity(obs_at_84px(fixture)),
           "render_time": [render_time(s, i) for s in ("fast", "default") for i in (True, False)],
           "metaworld_videos": metaworld_video_cost(out, args.mw_episodes)}
    for key, rows in res.items():
        print(key)
        for row in rows:
            print("  ", json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
