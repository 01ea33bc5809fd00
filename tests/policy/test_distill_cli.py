"""``lfm-policy distill`` end to end: teacher → students → ordinary checkpoint → eval; resume; errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import kill_after_checkpoint, metrics, tiny_config

from lfm_policy import Policy
from lfm_policy.cli import main as cli_main
from lfm_policy.flow import SolverConfig
from lfm_policy.train import train

OBS = {"agent_pos": torch.rand(3, 2, 2), "goal_pos": torch.rand(3, 2, 2), "obstacles": torch.rand(3, 2, 3)}


@pytest.fixture(scope="module")
def teachers(toy_zarr, tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {kind: train(tiny_config(toy_zarr, root / kind, kind=kind), progress=False) for kind in ("lfm", "fm")}


def test_distill_lfm_end_to_end(teachers, tmp_path, capsys):
    out = tmp_path / "distilled"
    argv = ["distill", str(teachers["lfm"]), "val_every=6", "--out", str(out), "--steps", "12", "--inputs",
            "student_path", "--no-progress"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "chunk (NFE 3)" in printed and "checkpoint:" in printed
    policy = Policy.load(out / "checkpoints" / "latest")
    teacher = Policy.load(teachers["lfm"])
    assert policy.nfe() == 3 and teacher.nfe() == 6  # 3 one-step students vs 3 blocks × midpoint
    distill = policy.config.head.distill
    assert distill.teacher == str(teachers["lfm"]) and len(distill.teacher_sha256) == 64
    noise = torch.randn(3, 16, 2)
    a, b = (policy.predict_action_chunk(OBS, noise=noise) for _ in range(2))
    torch.testing.assert_close(a, b)  # deterministic given the noise
    # the teacher's blocks are still there: the distilled checkpoint samples like its teacher with ODEs
    ode = SolverConfig(method="midpoint", steps=1)
    torch.testing.assert_close(policy.predict_action_chunk(OBS, noise=noise, solver=ode),
                               teacher.predict_action_chunk(OBS, noise=noise, solver=ode))
    mixed = [SolverConfig(method="student")] * 2 + [SolverConfig(method="midpoint", steps=2)]
    assert policy.nfe(mixed) == 6 and policy.predict_action_chunk(OBS, solver=mixed).shape == (3, 16, 2)
    summary = json.loads((out / "distill_summary.json").read_text())
    assert [b["block"] for b in summary["blocks"]] == [0, 1, 2] and summary["inputs"] == "student_path"
    assert all(b["wall_s"] > 0 and b["teacher_rk4_steps"] >= 8 for b in summary["blocks"])
    assert {r["stage"] for r in metrics(out) if "loss" in r} == {0, 1, 2}
    # lfm-policy eval takes it like any checkpoint, with its own default or any per-block mix
    base = ["eval", str(out / "checkpoints" / "latest"), "--task", "toy/point-obstacle", "--episodes", "1",
            "--no-progress"]
    assert cli_main([*base, "--out", str(tmp_path / "ev")]) == 0
    rec = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert rec["nfe"] == 3 and rec["solver"]["method"] == "student"  # one solver for every block
    assert cli_main([*base, "--solver", "student,student,midpoint:2", "--out", str(tmp_path / "ev2")]) == 0
    assert json.loads((tmp_path / "ev2" / "results.json").read_text())["nfe"] == 6
    assert cli_main([*base, "--nfe", "3", "--out", str(tmp_path / "ev3")]) == 0  # students stay students
    assert json.loads((tmp_path / "ev3" / "results.json").read_text())["nfe"] == 3


def test_distill_fm_to_one_step_and_a_partial_chain(teachers, tmp_path):
    assert cli_main(["distill", str(teachers["fm"]), "--out", str(tmp_path / "fm1"), "--steps", "5",
                     "--no-progress"]) == 0
    assert Policy.load(tmp_path / "fm1" / "checkpoints" / "latest").nfe() == 1
    # only the local blocks, the free block kept as a 2-step midpoint ODE by default
    assert cli_main(["distill", str(teachers["lfm"]), "--out", str(tmp_path / "part"), "--steps", "5", "--blocks",
                     "0", "1", "--sample", "student,student,midpoint:2", "--no-progress"]) == 0
    policy = Policy.load(tmp_path / "part" / "checkpoints" / "latest")
    assert policy.nfe() == 1 + 1 + 4 and policy.config.head.chain.student_steps == (1, 1, 0)


def test_distill_resumes_after_a_kill(teachers, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lfm_policy.cli", "distill", str(teachers["lfm"]), "checkpoint_every=5",
           "log_every=5", "--out", str(out), "--steps", "150", "--no-progress"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    step = kill_after_checkpoint(proc, out / "checkpoints" / "latest" / "train_state.json", 180)
    assert 180 <= step < 450, step
    assert cli_main(["distill", "--resume", str(out), "--no-progress"]) == 0
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 450
    assert (out / "distill_summary.json").is_file()


def test_distill_errors_are_one_line(teachers, toy_zarr, tmp_path, capsys):
    reg = train(tiny_config(toy_zarr, tmp_path / "reg", kind="regression", total_steps=4), progress=False)
    assert cli_main(["distill", str(reg), "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "cannot be distilled" in capsys.readouterr().err
    assert cli_main(["distill", str(teachers["lfm"]), "--out", str(tmp_path / "y"), "--blocks", "7",
                     "--no-progress"]) == 1
    assert "blocks" in capsys.readouterr().err
    assert cli_main(["distill", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "nothing to resume" in capsys.readouterr().err
