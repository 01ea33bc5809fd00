"""`lfm-policy collect --format robomimic` on a robosuite task: a file robomimic can replay."""

import json

import h5py
import numpy as np

from lfm_policy.cli import main
from lfm_policy.datasets.robomimic_convert import import_robomimic
from lfm_policy.datasets.robomimic_hdf5 import read_robomimic_hdf5
from lfm_policy.envs import registry
from lfm_policy.eval.env_from import read_dataset_env


def test_robomimic_hdf5_from_robosuite_lift_replays(tmp_path, capsys):
    out = tmp_path / "lift.hdf5"
    argv = [
        "collect",
        "--task",
        "robosuite/Lift",
        "--episodes",
        "2",
        "--seed",
        "5",
        "--out",
        str(out),
        "--env-arg",
        "hard_reset=false",  # in-place resets (fast); the hard-reset default is tested with the robosuite envs
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "[robomimic]" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift" and env_args["env_kwargs"]["controller_configs"]["type"] == "OSC_POSE"
        collect_attrs = json.loads(data.attrs["lfm_policy_collect"])
        assert collect_attrs["task"] == "robosuite/Lift" and collect_attrs["seeds"] == [5, 6]
        assert sorted(data.keys()) == ["demo_0", "demo_1"]
        demo = data["demo_0"]
        n = demo.attrs["num_samples"]
        assert demo["actions"].shape == (n, 7) and demo["states"].shape[0] == n and demo["dones"][-1] == 1
        states, model_file = demo["states"][:], demo.attrs["model_file"]
        eef = demo["obs/robot0_eef_pos"][:]
        obj = demo["obs/object"][:]
    assert "<mujoco" in model_file
    # Restoring a recorded state in a fresh env made from the file's env_args gives the recorded obs.
    # robosuite computes observations before the last physics substep's integration (mj_step), so
    # they lag the state by one 2 ms substep (< 1 mm here); a one-step misalignment (50 ms) is ~10x
    # larger, which the second check rules out.
    env = registry.make_env("robosuite/Lift", env_meta=env_args)
    err_same, err_next = [], []
    try:
        for t in range(0, len(states) - 1, 4):
            raw = env.robomimic_env.reset_to({"states": states[t], "model": model_file})
            np.testing.assert_allclose(raw["robot0_eef_pos"], eef[t], atol=1e-3)
            np.testing.assert_allclose(raw["object"], obj[t], atol=1e-3)
            err_same.append(np.abs(raw["robot0_eef_pos"] - eef[t]).max())
            err_next.append(np.abs(raw["robot0_eef_pos"] - eef[t + 1]).max())
    finally:
        env.close()
    assert np.mean(err_same) < 0.2 * np.mean(err_next)
    # and the datasets reader accepts it
    episodes = read_robomimic_hdf5(out)
    assert len(list(episodes)) == 2
    # an import keeps where the data came from: `eval --env-from` rebuilds our env (our renderer's frames)
    import_robomimic(out, tmp_path / "lift.zarr")
    for source in (out, tmp_path / "lift.zarr"):
        env = read_dataset_env(source)
        assert env.task == "robosuite/Lift" and not env.robomimic_frames
        assert env.env_kwargs["env_meta"]["env_kwargs"]["hard_reset"] is False
