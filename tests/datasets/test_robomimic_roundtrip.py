"""robomimic file -> import -> export gives back the original file (arrays, dtypes, names, masks, attrs)."""

import json

import h5py
import numpy as np
import pytest

from lfm_policy.cli import main
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.robomimic_convert import export_robomimic, import_robomimic
from lfm_policy.datasets.robomimic_hdf5 import write_robomimic_hdf5
from lfm_policy.errors import DataError

ENV_ARGS = {"env_name": "Toy", "type": 1, "env_kwargs": {"robots": ["Panda"]}}


def _datasets(group):
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_robomimic(a_path, b_path):
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        assert sorted(a["data"].keys()) == sorted(b["data"].keys())  # demo names
        assert int(a["data"].attrs["total"]) == int(b["data"].attrs["total"])
        assert json.loads(a["data"].attrs["env_args"]) == json.loads(b["data"].attrs["env_args"])
        assert sorted(a.get("mask", {}).keys()) == sorted(b.get("mask", {}).keys())
        for name in a.get("mask", {}):
            ma, mb = a[f"mask/{name}"], b[f"mask/{name}"]
            assert ma.dtype == mb.dtype and ma[()].tolist() == mb[()].tolist()
        for demo in a["data"]:
            ga, gb = a[f"data/{demo}"], b[f"data/{demo}"]
            assert int(ga.attrs["num_samples"]) == int(gb.attrs["num_samples"])
            assert ga.attrs.get("model_file") == gb.attrs.get("model_file")
            da, db = _datasets(ga), _datasets(gb)
            assert sorted(da) == sorted(db), demo
            for key in da:
                assert da[key].dtype == db[key].dtype, (demo, key)
                np.testing.assert_array_equal(da[key][()], db[key][()], err_msg=f"{demo}/{key}")


def test_robomimic_fixture_round_trip_is_exact(robomimic_files, tmp_path):
    buf = import_robomimic(robomimic_files["obs"], tmp_path / "lift.zarr")
    # next_obs of dataset_states_to_obs is obs shifted by one: only its last row is stored
    assert not [k for k in buf.keys if k.startswith("next_obs.")]
    assert buf.final_obs_keys == sorted(buf.attrs["schema"]["obs_keys"])
    back = tmp_path / "back.hdf5"
    assert export_robomimic(tmp_path / "lift.zarr", back) == 3  # next_obs by default
    assert_same_robomimic(robomimic_files["obs"], back)
    with h5py.File(robomimic_files["obs"], "r") as a, h5py.File(back, "r") as b:
        assert a["data"].attrs["env_args"] == b["data"].attrs["env_args"]  # even the JSON text


def _named_file(path, names, rng, *, shift=True):
    eps = []
    for name in names:
        t = int(rng.integers(3, 7))
        obs = {"eef_pos": rng.normal(size=(t + 1, 3)), "agentview_image": rng.integers(0, 256, (t + 1, 8, 8, 3),
                                                                                      dtype=np.uint8)}
        nxt = {k: v[1:] for k, v in obs.items()} if shift else {k: v[1:] + 1 for k, v in obs.items()}
        eps.append({"name": name, "obs": {k: v[:-1] for k, v in obs.items()}, "next_obs": nxt,
                    "actions": rng.uniform(-1, 1, (t, 4)), "rewards": rng.normal(size=t).astype(np.float32),
                    "dones": np.r_[np.zeros(t - 1), 1].astype(bool), "states": rng.normal(size=(t, 5)),
                    "model_file": f"<mujoco model='{name}'/>"})
    write_robomimic_hdf5(path, eps, env_args=ENV_ARGS, filters={"train": [2, 0], "valid": [1, 3]})
    return eps


def test_demo_names_are_kept(tmp_path):
    src = tmp_path / "named.hdf5"
    _named_file(src, [f"demo_{i}" for i in range(1, 5)], np.random.default_rng(0))
    with h5py.File(src, "r") as f:
        assert sorted(f["data"]) == ["demo_1", "demo_2", "demo_3", "demo_4"]
        assert f["mask/train"][()].tolist() == [b"demo_3", b"demo_1"]
    buf = import_robomimic(src, tmp_path / "n.zarr")
    assert [buf.get_episode_attrs(i)["demo"] for i in range(4)] == ["demo_1", "demo_2", "demo_3", "demo_4"]
    assert buf.attrs["filters"] == {"train": [2, 0], "valid": [1, 3]}
    assert buf.key_spec("done")[1] == np.bool_ and buf.key_spec("reward")[1] == np.float32
    assert main(["data", "export-robomimic", str(tmp_path / "n.zarr"), str(tmp_path / "back.hdf5")]) == 0
    assert_same_robomimic(src, tmp_path / "back.hdf5")


def test_next_obs_that_is_not_a_shift_is_kept_verbatim(tmp_path):
    src = tmp_path / "odd.hdf5"
    _named_file(src, ["demo_0", "demo_5", "demo_7", "demo_9"], np.random.default_rng(1), shift=False)
    buf = import_robomimic(src, tmp_path / "o.zarr")
    assert buf.attrs["schema"]["next_obs"] == {"agentview_image": "next_obs.agentview_image",
                                               "eef_pos": "next_obs.eef_pos"}
    assert {"next_obs.eef_pos", "next_obs.agentview_image"} <= set(buf.keys) and buf.final_obs_keys == []
    export_robomimic(tmp_path / "o.zarr", tmp_path / "back.hdf5")
    assert_same_robomimic(src, tmp_path / "back.hdf5")


def test_export_of_own_buffers_next_obs_and_no_next_obs(tmp_path, episode_factory):
    rng = np.random.default_rng(0)
    eps = [episode_factory(rng, n) for n in (4, 6)]
    with ReplayBuffer.create(tmp_path / "f.zarr") as buf:  # with final observations
        for ep in eps:
            buf.add_episode(ep, final_obs={"state": ep["state"][-1] + 5, "camera": ep["camera"][0]})
    with ReplayBuffer.create(tmp_path / "p.zarr") as buf:  # without
        for ep in eps:
            buf.add_episode(ep)
    export_robomimic(tmp_path / "f.zarr", tmp_path / "f.hdf5")
    assert main(["data", "export-robomimic", str(tmp_path / "p.zarr"), str(tmp_path / "p.hdf5"), "--next-obs"]) == 0
    with h5py.File(tmp_path / "f.hdf5", "r") as f, h5py.File(tmp_path / "p.hdf5", "r") as p:
        assert sorted(f["data"]) == ["demo_0", "demo_1"]
        for i, ep in enumerate(eps):
            nf, npl = f[f"data/demo_{i}/next_obs/state"][()], p[f"data/demo_{i}/next_obs/state"][()]
            np.testing.assert_array_equal(nf[:-1], ep["state"][1:])
            np.testing.assert_array_equal(nf[-1], ep["state"][-1] + 5)  # exact: the final observation
            np.testing.assert_array_equal(npl[-1], ep["state"][-1])  # no final observation: last one repeated
            np.testing.assert_array_equal(f[f"data/demo_{i}/next_obs/camera"][-1], ep["camera"][0])
    assert main(["data", "export-robomimic", str(tmp_path / "f.zarr"), str(tmp_path / "n.hdf5"), "--no-next-obs"]) == 0
    with h5py.File(tmp_path / "n.hdf5", "r") as f:
        assert "next_obs" not in f["data/demo_0"] and "obs" in f["data/demo_0"]


@pytest.mark.parametrize("names", [["demo_0", "demo_0"], ["demo_a"]])
def test_writer_rejects_bad_demo_names(tmp_path, names):
    rng = np.random.default_rng(0)
    eps = [{"name": n, "obs": {"x": rng.normal(size=(3, 2))}, "actions": rng.normal(size=(3, 2)),
            "rewards": np.zeros(3), "dones": np.zeros(3)} for n in names]
    with pytest.raises(DataError, match="demo name 'demo_(0|a)'"):
        write_robomimic_hdf5(tmp_path / "x.hdf5", eps, env_args={})
    assert not list(tmp_path.iterdir())
