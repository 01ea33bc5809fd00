import json
import shutil

import h5py
import numpy as np
import pytest

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.robomimic_hdf5 import (
    RobomimicFile,
    export_robomimic,
    import_robomimic,
    read_robomimic_hdf5,
    write_robomimic_hdf5,
)
from lfm_policy.datasets.stats import compute_stats
from lfm_policy.errors import DataError

ENV_ARGS = {"env_name": "Toy", "type": 1, "env_kwargs": {"robots": ["Panda"]}}


def _episode(rng, t, *, image=True, states=True):
    ep = {
        "obs": {"eef_pos": rng.normal(size=(t, 3)), "gripper": rng.normal(size=(t, 2))},
        "actions": rng.uniform(-1, 1, size=(t, 7)),
        "rewards": np.zeros(t),
        "dones": np.r_[np.zeros(t - 1, dtype=np.int64), 1],
    }
    if image:
        ep["obs"]["agentview_image"] = rng.integers(0, 256, size=(t, 16, 16, 3), dtype=np.uint8)
    if states:
        ep["states"] = rng.normal(size=(t, 9))
        ep["model_file"] = f"<mujoco model='m{t}'/>"
    return ep


def test_reads_the_output_of_robomimics_dataset_states_to_obs(robomimic_files):
    raw = h5py.File(robomimic_files["raw"], "r")
    with RobomimicFile(robomimic_files["obs"]) as f:
        assert f.env_meta["env_name"] == "Lift" and f.env_meta["type"] == 1
        assert f.env_meta["env_kwargs"]["camera_names"] == ["agentview", "robot0_eye_in_hand"]
        assert f.demos == ["demo_0", "demo_1", "demo_2"] and len(f) == 3
        assert sorted(f.filter_keys) == ["train", "valid"]
        assert sorted(f.filter_keys["train"] + f.filter_keys["valid"]) == f.demos
        assert {"agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "object"} <= set(f.obs_keys)
        assert f.image_keys == ["obs/agentview_image", "obs/robot0_eye_in_hand_image"]
        for name, ep in zip(f.demos, f):
            assert ep["name"] == name
            np.testing.assert_array_equal(ep["actions"], raw[f"data/{name}/actions"][()])
            np.testing.assert_array_equal(ep["states"], raw[f"data/{name}/states"][()])
            assert ep["model_file"] == raw[f"data/{name}"].attrs["model_file"]
            img = ep["obs"]["agentview_image"]
            assert img.dtype == np.uint8 and img.shape == (8, 32, 32, 3) and img.std() > 0
            assert ep["dones"][-1] == 1 and ep["rewards"].shape == (8,)
        stats = compute_stats(f, ["actions", "obs/agentview_image"])
        assert stats["obs/agentview_image"]["mean"].shape == (3,)
        all_actions = np.concatenate([raw[f"data/{d}/actions"][()] for d in f.demos])
        np.testing.assert_allclose(stats["actions"]["max"], all_actions.max(0))
        train = f.filter_keys["train"]
    eps = list(read_robomimic_hdf5(robomimic_files["obs"], obs_keys=["robot0_eef_pos"], filter_key="train"))
    assert [e["name"] for e in eps] == train and list(eps[0]["obs"]) == ["robot0_eef_pos"]
    raw.close()


def test_import_keeps_metadata_and_export_opens_in_robomimic(robomimic_files, tmp_path):
    out = tmp_path / "lift.zarr"
    calls = []
    buf = import_robomimic(robomimic_files["obs"], out, on_episode=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert buf.n_episodes == 3 and buf.n_steps == 24
    assert buf.attrs["env_meta"]["env_name"] == "Lift"
    assert buf.attrs["source"]["format"] == "robomimic_hdf5"
    assert {"action", "reward", "done", "sim_state", "agentview_image", "object"} <= set(buf.keys)
    with RobomimicFile(robomimic_files["obs"]) as f:
        masks = f.filter_keys
        assert buf.attrs["filters"] == {k: [f.demos.index(d) for d in v] for k, v in masks.items()}
        for i, name in enumerate(f.demos):
            ep = f.read_episode(name)
            got = buf.get_episode(i)
            np.testing.assert_array_equal(got["action"], ep["actions"])
            np.testing.assert_array_equal(got["agentview_image"], ep["obs"]["agentview_image"])
            assert buf.get_episode_attrs(i) == {"demo": name, "model_file": ep["model_file"]}

    sub = import_robomimic(robomimic_files["obs"], tmp_path / "sub.zarr", obs_keys=["robot0_eef_pos"],
                           filter_key="train")
    assert sub.n_episodes == len(masks["train"]) and sub.attrs["schema"]["obs_keys"] == ["robot0_eef_pos"]
    assert sub.attrs["filters"] == {"train": list(range(sub.n_episodes))}

    exported = tmp_path / "back.hdf5"
    assert export_robomimic(out, exported) == 3  # default: with next_obs
    with RobomimicFile(exported) as f:
        assert f.env_meta == buf.attrs["env_meta"] and f.filter_keys == masks
        for i, ep in enumerate(f):
            np.testing.assert_array_equal(ep["states"], buf.get_episode(i)["sim_state"])
            assert ep["model_file"] == buf.get_episode_attrs(i)["model_file"]

    # robomimic's own loaders read the exported file
    import robomimic.utils.file_utils as FileUtils
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset as RobomimicSequenceDataset

    assert FileUtils.get_env_metadata_from_dataset(str(exported)) == buf.attrs["env_meta"]
    obs_keys = ["robot0_eef_pos", "agentview_image"]
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": ["robot0_eef_pos"], "rgb": ["agentview_image"]}})
    shape_meta = FileUtils.get_shape_metadata_from_dataset(str(exported), all_obs_keys=obs_keys)
    assert shape_meta["ac_dim"] == 7 and shape_meta["all_shapes"]["agentview_image"] == [3, 32, 32]
    rds = RobomimicSequenceDataset(hdf5_path=str(exported), obs_keys=obs_keys,
                                   dataset_keys=("actions", "rewards", "dones"), seq_length=4,
                                   hdf5_cache_mode="all", filter_by_attribute="train", hdf5_use_swmr=False,
                                   load_next_obs=True)
    assert len(rds) == 8 * len(masks["train"])
    first = buf.attrs["filters"]["train"][0]
    ep = buf.get_episode(first)
    item = rds[0]
    np.testing.assert_allclose(item["actions"], ep["action"][:4])
    np.testing.assert_allclose(item["next_obs"]["robot0_eef_pos"], ep["robot0_eef_pos"][1:5])
    last = rds[7]  # the window at the episode's last step: padded with its last next_obs, the final observation
    np.testing.assert_allclose(last["next_obs"]["robot0_eef_pos"][0], buf.get_final_obs(first)["robot0_eef_pos"])
    rds.close_and_delete_hdf5_handle()


def test_demos_are_sorted_numerically_and_written_atomically(tmp_path):
    rng = np.random.default_rng(0)
    eps = [_episode(rng, 3 + i % 4) for i in range(12)]
    path = tmp_path / "toy.hdf5"
    assert write_robomimic_hdf5(path, iter(eps), env_args=ENV_ARGS, filters={"odd": [1, 3, 11]}) == 12
    with h5py.File(path, "r") as h:
        assert list(h["data"].keys())[:3] == ["demo_0", "demo_1", "demo_10"]  # HDF5's own order
        assert h["data"].attrs["total"] == sum(len(e["actions"]) for e in eps)
        assert json.loads(h["data"].attrs["env_args"]) == ENV_ARGS
        assert h["data/demo_4"].attrs["num_samples"] == 3
    with RobomimicFile(path) as f:
        assert f.demos == [f"demo_{i}" for i in range(12)]
        assert f.demo_names("odd") == ["demo_1", "demo_3", "demo_11"]
        for i, ep in enumerate(f):
            np.testing.assert_array_equal(ep["actions"], eps[i]["actions"])
            np.testing.assert_array_equal(ep["obs"]["agentview_image"], eps[i]["obs"]["agentview_image"])
            assert ep["model_file"] == eps[i]["model_file"]
        np.testing.assert_array_equal(f.episode_lengths, [len(e["actions"]) for e in eps])

    before = path.read_bytes()
    bad = [eps[0], {**eps[1], "actions": np.full((4, 7), np.nan)}]
    with pytest.raises(DataError, match=r"toy\.hdf5: episode 1: key 'actions' contains NaN"):
        write_robomimic_hdf5(path, bad, env_args=ENV_ARGS)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["toy.hdf5"]
    with pytest.raises(DataError, match="filter 'x' refers to episode 5"):
        write_robomimic_hdf5(tmp_path / "f.hdf5", eps[:2], env_args=ENV_ARGS, filters={"x": [5]})
    assert not (tmp_path / "f.hdf5").exists()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ep: ep.pop("actions"), "episode 0: missing key 'actions'"),
        (lambda ep: ep.pop("obs"), "episode 0: missing key 'obs'"),
        (lambda ep: ep["obs"].update(gripper=np.zeros((2, 2))), "key 'obs/gripper' has length 2"),
        (lambda ep: ep.update(actions=np.zeros((0, 7)), rewards=np.zeros(0), dones=np.zeros(0),
                              obs={"a": np.zeros((0, 1))}), "is empty"),
        (lambda ep: ep.update(rewards=np.zeros((5, 1))), "key 'rewards' must have 1 dimension"),
        (lambda ep: ep.update(actions=np.array([["x"] * 7] * 5)), "unsupported dtype"),
        (lambda ep: ep.update(extra=1), "unknown key 'extra'"),
        (lambda ep: ep.update(next_obs={"eef_pos": np.zeros((5, 3))}), "'next_obs' keys"),
    ],
)
def test_writer_rejects_bad_episodes(tmp_path, change, match):
    ep = _episode(np.random.default_rng(0), 5)
    change(ep)
    with pytest.raises(DataError, match=match):
        write_robomimic_hdf5(tmp_path / "o.hdf5", [ep], env_args=ENV_ARGS)
    assert not list(tmp_path.iterdir())


def test_reader_rejects_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.hdf5"
    write_robomimic_hdf5(good, [_episode(rng, 6, image=False), _episode(rng, 8, image=False)], env_args=ENV_ARGS,
                         filters={"train": [0]})

    def variant(name, edit):
        p = tmp_path / name
        shutil.copy(good, p)
        with h5py.File(p, "a") as h:
            edit(h)
        return p

    cases = [
        (variant("noact.hdf5", lambda h: h.__delitem__("data/demo_1/actions")),
         r"noact\.hdf5: demo_1: missing key 'actions'"),
        (variant("len.hdf5", lambda h: (h.__delitem__("data/demo_1/obs/gripper"),
                                        h.create_dataset("data/demo_1/obs/gripper", data=np.zeros((3, 2))))),
         r"len\.hdf5: demo_1: key 'obs/gripper' has length 3"),
        (variant("nan.hdf5", lambda h: h["data/demo_1/actions"].__setitem__((2, 0), np.inf)),
         r"nan\.hdf5: demo_1: key 'actions' contains NaN/Inf \(first at step 2\)"),
        (variant("ns.hdf5", lambda h: h["data/demo_0"].attrs.__setitem__("num_samples", 99)), "num_samples=99"),
    ]
    for path, match in cases:
        with pytest.raises(DataError, match=match):
            list(read_robomimic_hdf5(path))
    with pytest.raises(DataError, match=r"good\.hdf5: demo_0: obs key 'wrist' not found"):
        list(read_robomimic_hdf5(good, obs_keys=["wrist"]))
    with pytest.raises(DataError, match="unknown filter key 'valid'; available: \\['train'\\]"):
        list(read_robomimic_hdf5(good, filter_key="valid"))
    env = variant("env.hdf5", lambda h: h["data"].attrs.__setitem__("env_args", "{oops"))
    with pytest.raises(DataError, match=r"env_args'\] is not valid JSON"):
        _ = RobomimicFile(env).env_meta

    truncated = tmp_path / "trunc.hdf5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"trunc\.hdf5"):
        list(read_robomimic_hdf5(truncated))
    text = tmp_path / "text.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        RobomimicFile(text)
    with pytest.raises(FileNotFoundError):
        RobomimicFile(tmp_path / "none.hdf5")


def test_conversion_errors_leave_no_output(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src.hdf5"
    eps = [_episode(rng, 5) for _ in range(3)]
    write_robomimic_hdf5(src, eps, env_args=ENV_ARGS)
    with h5py.File(src, "a") as h:
        h["data/demo_2/actions"][1, 1] = np.nan
    with pytest.raises(DataError, match=r"src\.hdf5: demo_2: key 'actions' contains NaN"):
        import_robomimic(src, tmp_path / "o.zarr")
    with pytest.raises(DataError, match="obs key 'wrist' not found"):
        import_robomimic(src, tmp_path / "o.zarr", obs_keys=["wrist"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.hdf5"]

    buf = ReplayBuffer.in_memory()
    buf.add_episode({"action": np.zeros((4, 2), np.float32)})
    buf.copy_to(tmp_path / "noobs.zarr")
    with pytest.raises(DataError, match="no observation keys"):
        export_robomimic(tmp_path / "noobs.zarr", tmp_path / "x.hdf5")
    (tmp_path / "x.hdf5").write_text("keep")
    with pytest.raises(FileExistsError):
        export_robomimic(tmp_path / "noobs.zarr", tmp_path / "x.hdf5")
    assert (tmp_path / "x.hdf5").read_text() == "keep"


def test_writer_treats_none_optionals_as_absent(tmp_path):
    ep = _episode(np.random.default_rng(0), 4, image=False, states=False)
    ep.update(states=None, model_file=None, next_obs=None)
    write_robomimic_hdf5(tmp_path / "n.hdf5", [ep], env_args={})
    with RobomimicFile(tmp_path / "n.hdf5") as f:
        got = f.read_episode("demo_0")
        assert "states" not in got and "model_file" not in got and f.env_meta == {}
