"""Evaluations record the environment they ran in; compare refuses unpaired runs and pairs the rest."""

import json

import h5py
import pytest
from eval_helpers import tiny_train_config
from scipy.stats import binomtest

from lfm_policy.cli import main as cli_main
from lfm_policy.errors import DataError, LfmPolicyError
from lfm_policy.eval.compare import paired_outcomes
from lfm_policy.eval.env_from import read_dataset_env, resolve_env
from lfm_policy.eval.environment import canonical_sha256, environment_diff, fingerprint
from lfm_policy.eval.report import load_results
from lfm_policy.train import train

TOY = "toy/point-obstacle"


def _eval(ckpt, out, *extra):
    assert cli_main(["eval", str(ckpt), "--episodes", "3", "--out", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_registry_default_environment_is_recorded_from_the_env(tiny_checkpoint, tmp_path):
    rec = _eval(tiny_checkpoint, tmp_path / "a", "--task", TOY, "--env-arg", "max_episode_steps=30")
    env = rec["environment"]
    assert env["task"] == TOY and env["images"] is False and env["source"] == "registry default"
    assert env["env_kwargs"] == {"max_episode_steps": 30}
    assert env["env_class"] == "lfm_policy.envs.toy.PointObstacleEnv"
    assert env["max_episode_steps"] == 30 and env["config"]["max_episode_steps"] == 30  # from the env itself
    assert env["observation"]["agent_pos"] == [[2], "float32"] and env["cameras"] is None
    assert env["fingerprint"] == fingerprint(env) and len(env["fingerprint"]) == 64
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Environment" in report and env["fingerprint"] in report and "registry default" in report
    assert "head `lfm`" in report and "solver midpoint×" in report  # the checkpoint's own solver, named


def test_env_from_a_collected_zarr_uses_its_task_and_options(tiny_checkpoint, toy_zarr_eval, tmp_path, capsys):
    rec = _eval(tiny_checkpoint, tmp_path / "b", "--env-from", str(toy_zarr_eval))
    assert rec["task"] == TOY and rec["environment"]["source"] == str(toy_zarr_eval.resolve())
    default = _eval(tiny_checkpoint, tmp_path / "c", "--task", TOY)
    assert rec["environment"]["fingerprint"] == default["environment"]["fingerprint"]  # same env, other source
    capsys.readouterr()
    argv = ["eval", str(tiny_checkpoint), "--task", "toy/point-two-obstacles", "--env-from", str(toy_zarr_eval),
            "--out", str(tmp_path / "x"), "--no-progress"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "disagrees with --env-from" in err and "toy/point-obstacle" in err and "\n" not in err
    assert cli_main(["eval", str(tiny_checkpoint), "--out", str(tmp_path / "y")]) == 1
    assert "--task TASK or --env-from" in capsys.readouterr().err


def _robomimic_file(path, env_args):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.create_group("demo_0").create_dataset("actions", data=[[0.0] * 7])
        if env_args is not None:
            data.attrs["env_args"] = json.dumps(env_args)
    return path


def test_env_from_rejects_datasets_without_usable_env_metadata(tmp_path):
    with pytest.raises(DataError, match="no environment metadata"):
        read_dataset_env(_robomimic_file(tmp_path / "none.hdf5", None))
    with pytest.raises(DataError, match="robomimic env type 2"):
        read_dataset_env(_robomimic_file(tmp_path / "gym.hdf5", {"env_name": "Hopper-v4", "type": 2,
                                                                  "env_kwargs": {}}))
    with pytest.raises(DataError, match="'Stack', which is not a registered task"):
        read_dataset_env(_robomimic_file(tmp_path / "stack.hdf5", {"env_name": "Stack", "type": 1, "env_kwargs": {}}))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_dataset_env(tmp_path / "missing.hdf5")
    lift = read_dataset_env(_robomimic_file(tmp_path / "lift.hdf5", {"env_name": "Lift", "type": 1,
                                                                     "env_kwargs": {"hard_reset": True}}))
    assert lift.task == "robosuite/Lift" and lift.robomimic_frames and lift.env_kwargs["env_meta"]["env_name"] == "Lift"
    with pytest.raises(LfmPolicyError, match="robosuite/Can.* disagrees"):
        resolve_env(lift, "robosuite/Can", False, {})
    # robomimic's frames come from robosuite's own renderer: image policies get render_settings="default"
    assert resolve_env(lift, None, True, {})[1]["render_settings"] == "default"
    assert "render_settings" not in resolve_env(lift, "robosuite/Lift", False, {})[1]
    assert resolve_env(lift, None, True, {"render_settings": "fast"})[1]["render_settings"] == "fast"


@pytest.fixture(scope="module")
def lift_data(tmp_path_factory):
    """A 1-episode robosuite Lift zarr (collect, 20 steps, hard_reset off), its robomimic export, a tiny policy."""
    root = tmp_path_factory.mktemp("lift_env")
    zarr = root / "lift.zarr"
    assert cli_main(["collect", "--task", "robosuite/Lift", "--episodes", "1", "--keep-failed", "--out", str(zarr),
                     "--env-arg", "hard_reset=false", "--env-arg", "max_episode_steps=20", "--no-progress"]) == 0
    hdf5 = root / "lift.hdf5"
    assert cli_main(["data", "export-robomimic", str(zarr), str(hdf5)]) == 0
    ckpt = train(tiny_train_config(zarr, root / "run", **{"data.obs_keys": [], "batch_size": 4}), progress=False)
    return {"zarr": zarr, "hdf5": hdf5, "ckpt": ckpt}


def test_env_from_robosuite_datasets_records_the_effective_env_meta(lift_data, tmp_path):
    rec = _eval(lift_data["ckpt"], tmp_path / "z", "--env-from", str(lift_data["zarr"]), "--episodes", "1")
    env = rec["environment"]
    assert rec["task"] == "robosuite/Lift" and env["hard_reset"] is False and env["max_episode_steps"] == 20
    assert env["controller"] == "OSC_POSE" and env["control_freq"] == 20.0 and env["render_settings"] == "fast"
    assert env["env_kwargs"]["hard_reset"] is False and env["env_kwargs"]["env_meta"]["env_name"] == "Lift"
    assert env["env_meta"]["env_kwargs"]["hard_reset"] is False  # the env's own serialization
    assert env["env_meta_sha256"] == canonical_sha256(env["env_meta"])
    assert "effective env_meta" in (tmp_path / "z" / "report.md").read_text()
    # robomimic HDF5 export (env_args only): the same env, its episode limit given on the command line
    rec = _eval(lift_data["ckpt"], tmp_path / "h", "--env-from", str(lift_data["hdf5"]), "--episodes", "1",
                "--env-arg", "max_episode_steps=6")
    assert rec["environment"]["hard_reset"] is False and rec["environment"]["source"].endswith("lift.hdf5")
    assert rec["environment"]["env_meta"] == env["env_meta"]


def test_compare_refuses_other_environments_and_seeds_and_pairs_by_seed(tiny_checkpoint, tmp_path, capsys):
    a = tmp_path / "a"
    _eval(tiny_checkpoint, a, "--task", TOY)
    b = tmp_path / "b"
    _eval(tiny_checkpoint, b, "--task", TOY, "--env-arg", "max_episode_steps=40")
    capsys.readouterr()
    assert cli_main(["compare", str(a), str(b), "--plot", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "another environment" in err and "max_episode_steps: 80 vs 40" in err and "--allow-env-mismatch" in err
    assert "\n" not in err
    out_json = tmp_path / "cmp.json"
    assert cli_main(["compare", str(a), str(b), "--allow-env-mismatch", "--plot", str(tmp_path / "p.png"),
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "McNemar exact p" in out and "| b | 3 |" in out and "other environment than a" in out
    paired = json.loads(out_json.read_text())["paired"][0]
    assert paired["n_paired"] == 3 and paired["run"] == "b" and 0 <= paired["mcnemar_p"] <= 1
    c = tmp_path / "c"
    _eval(tiny_checkpoint, c, "--task", TOY, "--seed-start", "100001")
    assert cli_main(["compare", str(a), str(c), "--plot", str(tmp_path / "p.png")]) == 1
    assert "not paired" in capsys.readouterr().err
    assert cli_main(["compare", str(a), str(c), "--allow-seed-mismatch", "--plot", str(tmp_path / "p.png")]) == 0
    assert "| c | 2 |" in capsys.readouterr().out  # seeds 100001 and 100002 in both runs
    # a schema-1 file (no environment) is still read; its environment is unknown
    old = json.loads((a / "results.json").read_text())
    old["schema_version"] = 1
    del old["environment"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    assert load_results(tmp_path / "old")["environment"] == "unknown"
    assert cli_main(["compare", str(tmp_path / "old"), str(a), "--plot", str(tmp_path / "p.png")]) == 0
    assert "environment of old is unknown" in capsys.readouterr().out


def _record(outcomes, seed_start=0):
    eps = [{"seed": seed_start + i, "success": s, "error": None} for i, s in enumerate(outcomes)]
    return {"episodes": eps}


def test_paired_outcomes_match_seeds_by_value_with_an_exact_mcnemar_test():
    a = _record([True] * 6 + [False] * 4)  # seeds 0..9
    b = _record([False] * 5 + [True] * 3 + [False] * 2)
    b["episodes"].reverse()  # order must not matter
    st = paired_outcomes(a, b)
    assert (st["both_succeed"], st["both_fail"], st["only_a"], st["only_b"]) == (1, 2, 5, 2)
    assert st["mcnemar_p"] == pytest.approx(binomtest(5, 7, 0.5).pvalue) and st["n_paired"] == 10
    a["episodes"][0]["error"] = "worker process died"  # crashed episodes are left out
    assert paired_outcomes(a, b)["n_paired"] == 9
    assert paired_outcomes(_record([True, False]), _record([True, False]))["mcnemar_p"] == 1.0
    assert paired_outcomes(_record([True]), _record([True], seed_start=5))["mcnemar_p"] is None


def test_environment_diff_names_nested_fields():
    a = {"task": TOY, "source": "/x", "env_meta": {"env_kwargs": {"hard_reset": True, "control_freq": 20}}}
    b = {"task": TOY, "source": "/y", "env_meta": {"env_kwargs": {"hard_reset": False, "control_freq": 20}}}
    assert environment_diff(a, b) == [("env_meta.env_kwargs.hard_reset", True, False)]  # source is not compared
    assert fingerprint(a) != fingerprint(b) and fingerprint(a) == fingerprint({**a, "source": "/z"})
