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
