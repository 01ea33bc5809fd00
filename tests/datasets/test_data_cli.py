import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from lfm_policy.cli import main
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.robomimic_hdf5 import RobomimicFile, write_robomimic_hdf5


@pytest.fixture
def zarr_path(tmp_path, episode_factory):
    rng = np.random.default_rng(0)
    path = tmp_path / "demo.zarr"
    with ReplayBuffer.create(path, attrs={"env_meta": {"env_name": "Toy", "type": 1, "env_kwargs": {}},
                                          "filters": {"train": [0, 1], "valid": [2]}}) as buf:
        for n in (6, 9, 4):
            buf.add_episode(episode_factory(rng, n))
    return path


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_info_on_zarr_and_json(zarr_path, capsys):
    assert main(["data", "info", str(zarr_path)]) == 0
    out = capsys.readouterr().out
    assert "episodes: 3   steps: 19" in out and "camera" in out and "image" in out
    assert "env: Toy" in out and "train (2 episodes)" in out
    assert main(["data", "info", str(zarr_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "zarr_replay_buffer" and info["n_episodes"] == 3
    assert info["episode_length"]["min"] == 4 and info["episode_length"]["max"] == 9
    assert sum(c for _, _, c in info["episode_length"]["histogram"]) == 3
    action = ReplayBuffer.open(zarr_path).copy_to_memory().data["action"]
    np.testing.assert_allclose(info["keys"]["action"]["max"], action.max(0), atol=1e-5)
    assert info["keys"]["camera"]["shape"] == [8, 8, 3] and len(info["keys"]["camera"]["mean"]) == 3


def test_import_export_and_info_on_hdf5(zarr_path, tmp_path, capsys):
    h5 = tmp_path / "demo.hdf5"
    assert main(["data", "export-robomimic", str(zarr_path), str(h5)]) == 0
    assert main(["data", "info", str(h5), "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert "robomimic_hdf5" in out and "obs/camera" in out and "valid (1 episodes)" in out
    back = tmp_path / "back.zarr"
    assert main(["data", "import-robomimic", str(h5), str(back), "--filter", "train", "--obs-keys", "state"]) == 0
    b = ReplayBuffer.open(back)
    assert b.n_episodes == 2 and b.keys == ["action", "done", "reward", "state"]
    np.testing.assert_array_equal(b.get_episode(1)["state"], ReplayBuffer.open(zarr_path).get_episode(1)["state"])
    # refuses to overwrite without --overwrite, then replaces with it
    assert main(["data", "import-robomimic", str(h5), str(back)]) == 1
    _one_line_error(capsys, 1, "already exists")
    assert main(["data", "import-robomimic", str(h5), str(back), "--overwrite"]) == 0
    assert ReplayBuffer.open(back).n_episodes == 3


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_view_renders_cameras_and_action_plot(zarr_path, tmp_path, ext):
    out = tmp_path / f"ep{ext}"
    assert main(["data", "view", str(zarr_path), "--episode", "1", "--out", str(out), "--fps", "5"]) == 0
    frames = iio.imread(out)
    assert frames.shape[0] == 9 and frames.shape[3] == 3
    assert frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    cam_rows = frames[:, :160].astype(int)
    assert cam_rows.std() > 20  # random camera pixels are visible (upscaled 8x8 -> 160x160)
    plot = frames[:, 160:].astype(int)
    moving = np.abs(plot[0] - plot[-1]).sum(-1) > 60  # the cursor moves across the plot
    assert moving.any()
    assert not list(tmp_path.glob(".*tmp*"))


def test_view_low_dim_only_and_robomimic(tmp_path, capsys):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.in_memory()
    buf.add_episode({"action": rng.normal(size=(7, 2)).astype(np.float32), "state": np.zeros((7, 3), np.float32)})
    path = tmp_path / "low.zarr"
    buf.copy_to(path)
    out = tmp_path / "low.gif"
    assert main(["data", "view", str(path), "--out", str(out)]) == 0
    assert iio.imread(out).shape[0] == 7
    h5 = tmp_path / "r.hdf5"
    ep = {"obs": {"agentview_image": rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)},
          "actions": rng.normal(size=(5, 4)), "rewards": np.zeros(5), "dones": np.zeros(5)}
    write_robomimic_hdf5(h5, [ep, ep], env_args={})
    assert main(["data", "view", str(h5), "--episode", "-1", "--out", str(tmp_path / "r.mp4")]) == 0
    assert iio.imread(tmp_path / "r.mp4").shape[0] == 5
    with RobomimicFile(h5) as f:
        assert f.image_keys == ["obs/agentview_image"]
    assert main(["data", "view", str(h5), "--episode", "2", "--out", str(tmp_path / "x.mp4")]) == 1
    _one_line_error(capsys, 1, "episode 2 out of range")
    assert main(["data", "view", str(h5), "--out", str(tmp_path / "x.avi")]) == 1
    _one_line_error(capsys, 1, "unsupported video format")
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.avi").exists()


def test_bad_input_gives_one_line_errors(zarr_path, tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope.zarr")]) == 1
    _one_line_error(capsys, 1, "nope.zarr")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    assert main(["data", "info", str(junk)]) == 1
    _one_line_error(capsys, 1, "junk.bin", "neither a zarr replay buffer")
    h5 = tmp_path / "d.hdf5"
    assert main(["data", "export-robomimic", str(zarr_path), str(h5)]) == 0
    assert main(["data", "import-robomimic", str(h5), str(tmp_path / "o.zarr"), "--obs-keys", "wrist"]) == 1
    _one_line_error(capsys, 1, "d.hdf5", "demo_0", "'wrist'")
    assert main(["data", "import-robomimic", str(h5), str(tmp_path / "o.zarr"), "--filter", "test"]) == 1
    _one_line_error(capsys, 1, "unknown filter key 'test'")
    trunc = tmp_path / "t.hdf5"
    trunc.write_bytes(h5.read_bytes()[:2000])
    assert main(["data", "import-robomimic", str(trunc), str(tmp_path / "o.zarr")]) == 1
    _one_line_error(capsys, 1, "t.hdf5")
    assert not (tmp_path / "o.zarr").exists() and not list(tmp_path.glob("*.tmp"))


def test_cli_subprocess(zarr_path, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "lfm_policy.cli", "data", "info", str(zarr_path), "--no-stats"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "episodes: 3" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "lfm_policy.cli", "data", "export-robomimic",
                          str(tmp_path / "missing.zarr"), str(tmp_path / "o.hdf5")], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "missing.zarr" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_length_histogram_bins_are_distinct_integer_ranges(tmp_path, capsys):
    from lfm_policy.datasets.info import length_summary

    for lengths in ([58, 59, 60, 61, 75], [58, 58, 58], [3, 4, 5], list(range(10, 40)), [1, 100]):
        hist = length_summary(np.array(lengths))["histogram"]
        assert hist[0][0] == min(lengths) and hist[-1][1] == max(lengths) and len(hist) <= 8
        assert sum(c for _, _, c in hist) == len(lengths)
        for (lo, hi, _), (nlo, _, _) in zip(hist, hist[1:]):
            assert lo <= hi and nlo == hi + 1  # consecutive, disjoint, integer-aligned
        for lo, hi, c in hist:
            assert c == sum(lo <= n <= hi for n in lengths)
    assert length_summary(np.array([58, 59, 60, 61, 75]))["histogram"][0] == [58, 60, 3]  # 18 lengths, width 3
    assert length_summary(np.array([58, 58, 59]))["histogram"] == [[58, 58, 2], [59, 59, 1]]
    buf = ReplayBuffer.in_memory()
    for n in (58, 59, 60, 75):
        buf.add_episode({"action": np.zeros((n, 2), np.float32)})
    buf.copy_to(tmp_path / "h.zarr")
    assert main(["data", "info", str(tmp_path / "h.zarr"), "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert "58-58" not in out and " 58-60 " in out and " 73-75 " in out


def test_info_shows_env_collection_and_format(tmp_path, capsys):
    env_meta = {"env_name": "Lift", "type": 1, "env_version": "1.4.1", "env_kwargs": {
        "robots": ["Panda"], "controller_configs": {"type": "OSC_POSE", "kp": 150}, "control_freq": 20,
        "hard_reset": False, "camera_names": ["agentview", "robot0_eye_in_hand"], "camera_heights": 84,
        "camera_widths": [84, 96], "reward_shaping": False, "ignore_done": True}}
    with ReplayBuffer.create(tmp_path / "c.zarr", attrs={
            "env_meta": env_meta, "task": "lift", "collector": "lfm-policy collect", "seeds": [0, 2, 3],
            "base_seed": 0, "n_discarded": 1, "notes": "x"}) as buf:
        buf.add_episode({"action": np.zeros((3, 7), np.float32)})
    assert main(["data", "info", str(tmp_path / "c.zarr")]) == 0
    out = capsys.readouterr().out
    assert "(zarr_replay_buffer, format 2: chunks checksummed (crc32c))" in out
    assert "env: Lift (type 1, version 1.4.1)" in out
    assert "robots: Panda   controller: OSC_POSE   control_freq: 20   hard_reset: False" in out
    assert "cameras (HxW): agentview 84x84, robot0_eye_in_hand 84x96" in out
    assert "other kwargs: ignore_done=True, reward_shaping=False" in out
    assert "task: lift   collector: lfm-policy collect   kept seeds: 3, base seed 0   discarded: 1" in out
    assert "attrs: notes" in out


def test_info_reports_nan_per_key_while_import_still_refuses(tmp_path, capsys):
    rng = np.random.default_rng(0)
    eps = [{"obs": {"pos": rng.normal(size=(5, 2))}, "actions": rng.normal(size=(5, 3)),
            "rewards": np.zeros(5), "dones": np.zeros(5)} for _ in range(3)]
    eps[1]["actions"][2, 1] = np.nan
    eps[2]["actions"][0, 0] = np.inf
    eps[1]["actions"][4, 0] = np.nan
    h5 = tmp_path / "nan.hdf5"
    write_robomimic_hdf5(h5, eps[:1], env_args={"env_name": "Toy", "type": 1})
    import h5py

    with h5py.File(h5, "a") as f:  # NaN written behind the writer's back (the writer refuses it)
        for i in (1, 2):
            grp = f["data"].create_group(f"demo_{i}")
            for k, v in (("obs/pos", eps[i]["obs"]["pos"]), ("actions", eps[i]["actions"]),
                         ("rewards", eps[i]["rewards"]), ("dones", eps[i]["dones"])):
                grp.create_dataset(k, data=v)
    assert main(["data", "info", str(h5)]) == 0
    out = capsys.readouterr().out
    assert "episodes: 3   steps: 15" in out and "obs/pos" in out
    assert "!! 3 NaN/Inf values (first at episode 1, step 2)" in out
    finite = np.concatenate([e["actions"] for e in eps])
    finite = np.where(np.isfinite(finite), finite, np.nan)
    assert main(["data", "info", str(h5), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    act = info["keys"]["actions"]
    assert act["nonfinite"] == 3 and act["first_nonfinite"] == {"episode": 1, "step": 2}
    np.testing.assert_allclose(act["max"], np.nanmax(finite, 0), atol=1e-6)
    np.testing.assert_allclose(act["mean"], np.nanmean(finite, 0), atol=1e-6)
    assert "nonfinite" not in info["keys"]["obs/pos"]
    assert main(["data", "import-robomimic", str(h5), str(tmp_path / "o.zarr")]) == 1
    _one_line_error(capsys, 1, "nan.hdf5: demo_1: key 'actions' contains NaN/Inf (first at step 2)")
    assert not (tmp_path / "o.zarr").exists()
