"""LeRobot folders: our reader against folders LeRobot itself wrote (tests/fixtures/lerobot, made by
scripts/lerobot_fixtures/make_fixtures.py), import → train, export → read back, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lfm_policy.cli import main as cli_main
from lfm_policy.datasets.lerobot_convert import buffer_key, import_lerobot, lerobot_name
from lfm_policy.datasets.lerobot_format import LeRobotFolder
from lfm_policy.datasets.lerobot_write import export_lerobot
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lerobot"
FOLDERS = sorted(p for p in FIXTURES.glob("v*/*") if (p / "meta" / "info.json").is_file())
#: Our decode of LeRobot's own AV1 files equals what LeRobot's reader returns (both go through FFmpeg's
#: libdav1d); against the frames handed to LeRobot's writer the codec loses a few grey levels.
CODEC_MEAN_ABS = 6.0


def _expected(folder: Path) -> dict:
    return json.loads((folder / "expected.json").read_text())


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_reader_returns_what_lerobot_returns(folder):
    exp = _expected(folder)
    src = LeRobotFolder(folder)
    assert src.version == exp["codebase_version"] and src.fps == exp["fps"]
    assert [e.length for e in src.episodes] == exp["episode_lengths"]
    frames = exp["frames"]
    got = {k: np.concatenate([src.read_episode(e.index, [k])[k] for e in src.episodes])
           for k in ("observation.state", "action", "episode_index", "frame_index", "timestamp", "task_index")}
    for k in ("observation.state", "action", "timestamp"):
        np.testing.assert_array_equal(got[k], np.asarray([f[k] for f in frames], np.float32).reshape(got[k].shape))
    for k in ("episode_index", "frame_index", "task_index"):
        np.testing.assert_array_equal(got[k], [f[k] for f in frames])
    tasks = [t for e in src.episodes for t in [e.tasks[0]] * e.length]
    assert tasks == [f["task"] for f in frames]
    if src.camera_keys:  # an MP4 stream (dtype video) or PNGs in the Parquet (dtype image)
        (key,) = src.camera_keys
        video = np.concatenate([src.read_episode(e.index, [key])[key] for e in src.episodes])
        assert video.dtype == np.uint8 and video.shape[1:] == (24, 32, 3)
        np.testing.assert_array_equal(video, np.load(folder / "frames_lerobot.npy"))
        written = np.load(folder / "frames_written.npy")
        if src.features[key]["dtype"] == "image":
            np.testing.assert_array_equal(video, written)  # PNG is lossless
        else:
            assert np.abs(video.astype(int) - written).mean() < CODEC_MEAN_ABS


def test_key_names_map_to_ours_and_back():
    assert buffer_key("observation.state") == "state" and buffer_key("action") == "action"
    assert buffer_key("observation.images.front") == "front_image" and buffer_key("next.reward") == "reward"
    assert buffer_key("observation.images.wrist.left") == "wrist_left_image"
    for key, image in (("state", False), ("front_image", True), ("action", False), ("done", False)):
        assert buffer_key(lerobot_name(key, image)) == key


def test_import_trains_and_exports_a_folder_lerobot_can_read(tmp_path):
    folder = FIXTURES / "v30" / "video"
    buf = import_lerobot(folder, tmp_path / "demo.zarr")
    assert sorted(buf.keys) == ["action", "front_image", "state"] and buf.n_episodes == 2
    assert buf.attrs["schema"]["obs_keys"] == ["state", "front_image"]
    assert buf.get_episode_attrs(1) == {"lerobot_episode": 1, "tasks": ["close the drawer"]}
    src = LeRobotFolder(folder)
    np.testing.assert_array_equal(buf.get_episode(0)["front_image"], src.read_episode(0)["observation.images.front"])

    # The shipped image config trains on it with only the data keys changed.
    run = tmp_path / "run"
    cli_main(["train", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "toy_image_cpu.json"),
              f"data.path={tmp_path / 'demo.zarr'}", 'data.obs_keys=["state","front_image"]', f"out_dir={run}",
              "total_steps=8", "batch_size=4", "val_every=1000", "checkpoint_every=1000", "data.val_ratio=0",
              "policy.horizon=4", "policy.n_action_steps=2", "optim.warmup_steps=1"])
    assert (run / "checkpoints" / "latest" / "model.safetensors").is_file()

    # Export → our reader: low-dim exact, frames within the codec's loss, LeRobot's names and layout.
    out = tmp_path / "lerobot_out"
    assert export_lerobot(tmp_path / "demo.zarr", out) == 2
    back = LeRobotFolder(out)
    assert back.version == "v3.0" and back.video_keys == ["observation.images.front"]
    ref = json.loads((folder / "meta" / "info.json").read_text())
    info = json.loads((out / "meta" / "info.json").read_text())
    assert set(ref) - {"robot_type"} <= set(info) and set(info["features"]) == set(ref["features"])
    for e in src.episodes:
        a, b = src.read_episode(e.index), back.read_episode(e.index)
        np.testing.assert_array_equal(a["observation.state"], b["observation.state"])
        np.testing.assert_array_equal(a["action"], b["action"])
        assert np.abs(a["observation.images.front"].astype(int) - b["observation.images.front"]).mean() < CODEC_MEAN_ABS
        assert back.episode(e.index).tasks == e.tasks
    stats = json.loads((out / "meta" / "stats.json").read_text())
    actions = np.concatenate([buf.get_episode(i)["action"] for i in range(buf.n_episodes)])
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-6)
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_cli_info_import_export(tmp_path, capsys):
    folder = FIXTURES / "v30" / "lowdim"
    assert cli_main(["data", "info", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "LeRobot v3.0, 10 fps" in text and "episodes 3, frames 36" in text and "observation.state" in text
    assert cli_main(["data", "import-lerobot", str(folder), str(tmp_path / "a.zarr"), "--episodes", "0", "2"]) == 0
    buf = ReplayBuffer.open(tmp_path / "a.zarr")
    assert [buf.get_episode_attrs(i)["lerobot_episode"] for i in range(buf.n_episodes)] == [0, 2]
    assert list(buf.episode_lengths) == [12, 15]
    assert cli_main(["data", "export-lerobot", str(tmp_path / "a.zarr"), str(tmp_path / "out")]) == 0
    assert [e.length for e in LeRobotFolder(tmp_path / "out").episodes] == [12, 15]
    from lfm_policy.datasets.cli import open_dataset

    with pytest.raises(DataError, match="not a readable zarr replay buffer"):  # only `data info` reads a folder
        with open_dataset(str(folder)):
            pass


def _copy(tmp_path, name="video"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / "v30" / name, dst)
    return dst


def _edit_info(folder, fn):
    path = folder / "meta" / "info.json"
    info = json.loads(path.read_text())
    fn(info)
    path.write_text(json.dumps(info))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_episodes(folder, fn):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = next((folder / "meta" / "episodes").glob("*/*.parquet"))
    rows = pq.read_table(path).to_pylist()
    fn(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _short_episode(folder):
    _edit_episodes(folder, lambda rows: rows[0].update(length=rows[0]["length"] + 1))


def _late_video(folder):  # episode 1's frames start 0.5 s later: the file ends 5 frames short
    _edit_episodes(folder, lambda rows: rows[1].update({"videos/observation.images.front/from_timestamp": 1.5}))


BAD = [
    ("no info.json", lambda f: (f / "meta" / "info.json").unlink(), r"no meta/info\.json"),
    ("unknown version", lambda f: _edit_info(f, lambda i: i.update(codebase_version="v9.0")),
     "codebase_version 'v9.0'"),
    ("feature absent", lambda f: _edit_info(f, lambda i: i["features"].update(
        {"observation.effort": {"dtype": "float32", "shape": [2]}})), "feature 'observation.effort' listed"),
    ("truncated parquet", lambda f: _truncate(next((f / "data").glob("*/*.parquet"))), "cannot read Parquet"),
    ("truncated video", lambda f: _truncate(next((f / "videos").rglob("*.mp4")), 0.6), "observation.images.front"),
    ("length mismatch", _short_episode, "episode 0"),
    ("video shorter than episode", _late_video, "episode 1, key 'observation.images.front'.*expected 8 frames"),
]


@pytest.mark.parametrize("damage,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_folders_give_one_clear_error_and_no_output(tmp_path, damage, message):
    folder = _copy(tmp_path)
    damage(folder)
    out = tmp_path / "out.zarr"
    with pytest.raises(DataError, match=message) as err:
        import_lerobot(folder, out)
    assert "\n" not in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def test_export_errors_leave_nothing(tmp_path):
    with ReplayBuffer.create(tmp_path / "odd.zarr") as buf:
        buf.add_episode({"state": np.zeros((3, 2), np.float32), "action": np.zeros((3, 2), np.float32),
                         "cam_image": np.zeros((3, 7, 8, 3), np.uint8)})
    with pytest.raises(DataError, match="even width and height"):
        export_lerobot(tmp_path / "odd.zarr", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.zarr"]
    with pytest.raises(FileExistsError):
        export_lerobot(tmp_path / "odd.zarr", tmp_path / "odd.zarr")
