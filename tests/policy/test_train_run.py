"""The run directory: no half runs, resume from OUT_DIR with its saved config, best checkpoints, output."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from test_train import kill_after_checkpoint, metrics, tiny_config

from lfm_policy.cli import main as cli_main
from lfm_policy.errors import LfmPolicyError
from lfm_policy.train import TrainConfig, Trainer, train
from lfm_policy.train_run import config_differences


def test_bad_dataset_leaves_no_out_dir(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        train(tiny_config(tmp_path / "missing.zarr", out), progress=False)
    assert not out.exists()


def test_failure_before_first_checkpoint_removes_the_run(toy_zarr, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Trainer, "_save_latest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train(tiny_config(toy_zarr, out, checkpoint_every=1000), progress=False)
    assert not out.exists()


def test_failure_after_a_checkpoint_is_recorded_and_resumable(toy_zarr, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = Trainer._save_latest

    def second_save_fails(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "_save_latest", second_save_fails)
    with pytest.raises(RuntimeError):
        train(tiny_config(toy_zarr, out), progress=False)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "disk full" in status["error"]
    assert status["resume"] == f"lfm-policy train --resume {out}"
    monkeypatch.setattr(Trainer, "_save_latest", real)
    assert cli_main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_existing_run_is_not_overwritten_silently(toy_zarr, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(toy_zarr, out, total_steps=6), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(toy_zarr, out, total_steps=6), progress=False)
    n_lines = len(metrics(out))
    train(tiny_config(toy_zarr, out, total_steps=6), overwrite=True, progress=False)
    assert len(metrics(out)) == n_lines  # the old records are gone, not appended to


def test_resume_refuses_a_different_config_and_a_run_without_checkpoint(toy_zarr, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(toy_zarr, out, total_steps=6), progress=False)
    assert cli_main(["train", "--resume", str(out), "total_steps=400", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "total_steps: saved 6, requested 400" in err and err.count("\n") == 1
    # a field that does not change what is learned may differ
    assert cli_main(["train", "--resume", str(out), "log_every=1", "--no-progress"]) == 0
    with pytest.raises(LfmPolicyError, match="policy.head.kind"):
        train(tiny_config(toy_zarr, out, total_steps=6, **{"policy.head.kind": "fm"}), resume=True)
    shutil.rmtree(out / "checkpoints")
    assert cli_main(["train", "--resume", str(out), "--no-progress"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "nowhere"), "--no-progress"]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_config_differences_names_nested_fields():
    a = TrainConfig().to_dict()
    b = TrainConfig().with_overrides(["policy.head.chain.n_blocks=2", "device=cpu"]).to_dict()
    assert config_differences(a, b) == [("policy.head.chain.n_blocks", 4, 2)]  # device may change


def test_resume_from_out_dir_after_kill_keeps_overrides_and_no_duplicate_metrics(toy_zarr, tmp_path):
    """Started with non-default overrides on the command line, killed in block 2, resumed from OUT_DIR."""
    out = tmp_path / "run"
    base = tmp_path / "base.json"
    tiny_config(toy_zarr, tmp_path / "elsewhere").to_json(base)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lfm_policy.cli", "train", "--config", str(base), f"out_dir={out}",
           "total_steps=240", "checkpoint_every=7", "log_every=3", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest" / "train_state.json"
    step = kill_after_checkpoint(proc, latest, 90)
    assert 90 <= step < 240, step
    assert json.loads((out / "status.json").read_text())["state"] == "running"  # killed: no chance to say more
    assert cli_main(["train", "--resume", str(out), "--no-progress"]) == 0
    recs = metrics(out)
    for key in ("loss", "val_loss"):
        steps = [r["step"] for r in recs if key in r]
        assert steps == sorted(set(steps)), key  # strictly increasing: nothing logged twice
    loss_steps = [r["step"] for r in recs if "loss" in r]
    assert loss_steps[-1] == 240 and all(b - a <= 3 for a, b in zip(loss_steps, loss_steps[1:]))
    saved = TrainConfig.from_json(out / "train_config.json")
    assert saved.total_steps == 240 and saved.out_dir == str(out) and saved.checkpoint_every == 7
    final = json.loads(latest.read_text())["progress"]
    assert final["stage"] == 3 and final["global_step"] == 240


def test_best_checkpoints_are_the_best_validations_of_the_last_stage(toy_zarr, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(toy_zarr, out, total_steps=60, val_every=3, keep_best=2, val_batches=1), progress=False)
    last_stage = [r for r in metrics(out) if "val_action_mse" in r]
    assert {r["stage"] for r in last_stage} == {2} and len(last_stage) >= 5  # every validation of block 3
    expected = sorted(last_stage, key=lambda r: r["val_action_mse"])[:2]
    best = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("best-"))
    assert best == sorted(f"best-step{r['step']}" for r in expected)
    for r in expected:
        meta = json.loads((out / "checkpoints" / f"best-step{r['step']}" / "policy.json").read_text())
        assert meta["metadata"]["val_action_mse"] == pytest.approx(r["val_action_mse"])
    assert all("val_action_mse_normalized" in r for r in last_stage)


def test_no_progress_logs_a_line_per_validation(toy_zarr, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    tiny_config(toy_zarr, out, total_steps=12, val_every=2).to_json(cfg)
    with caplog.at_level(logging.INFO, logger="lfm_policy.train"):
        assert cli_main(["train", "--config", str(cfg), "--no-progress"]) == 0
    lines = [r.getMessage() for r in caplog.records if "validation" in r.getMessage()]
    n_val = sum("val_loss" in r for r in metrics(out))
    assert len(lines) == n_val >= 6 and "val_loss" in lines[0] and "(stage 1/3)" in lines[0]


def test_progress_bar_covers_the_whole_run(toy_zarr, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(toy_zarr, out, total_steps=12, val_every=4), progress=True)
    err = capsys.readouterr().err
    assert "12/12" in err and "stage 3/3" in err
    assert "step 4 (stage 1/3) validation: val_loss" in err  # printed above the bar as it comes


def test_too_few_windows_for_a_batch_is_an_error(toy_zarr, tmp_path):
    with pytest.raises(LfmPolicyError, match="fewer than batch_size=100000"):
        train(tiny_config(toy_zarr, tmp_path / "run", batch_size=100000), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_damaged_dataset_does_not_train(toy_zarr, tmp_path, capsys):
    data = tmp_path / "toy.zarr"
    shutil.copytree(toy_zarr, data)
    chunk = next((data / "data" / "action" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()  # lose one chunk file of the actions
    cfg = tmp_path / "cfg.json"
    tiny_config(data, tmp_path / "run").to_json(cfg)
    assert cli_main(["train", "--config", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "key 'action'" in err and "missing" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
