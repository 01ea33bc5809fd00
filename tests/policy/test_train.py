import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lfm_policy import Policy
from lfm_policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(data, out, kind="lfm", **kw) -> TrainConfig:
    cfg = TrainConfig.from_json(ROOT / "configs" / "toy_lowdim.json")
    return cfg.with_overrides([
        f"data.path={data}", f"out_dir={out}", f"policy.head.kind={kind}", "policy.head.chain.n_blocks=3",
        "policy.head.net.family=mlp", "policy.head.net.mlp.width=32", "policy.head.net.mlp.depth=1",
        "policy.head.net.mlp.time_dim=16", "total_steps=30", "batch_size=16", "log_every=5", "val_every=10",
        "checkpoint_every=5", "data.val_ratio=0.2", *[f"{k}={json.dumps(v)}" for k, v in kw.items()]])


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def kill_after_checkpoint(proc, train_state, min_step, timeout=120.0):
    """SIGKILL ``proc`` once its checkpoint ``train_state`` (train_state.json) is at ``min_step``; its step."""
    deadline, step = time.time() + timeout, 0
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(train_state.read_text())["progress"]["global_step"]
        except (json.JSONDecodeError, KeyError, FileNotFoundError):
            pass
        if step >= min_step:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return step


def test_train_save_load_predict_end_to_end(toy_zarr, tmp_path):
    out = tmp_path / "run"
    path = train(tiny_config(toy_zarr, out), progress=False)
    recs = metrics(out)
    assert {r["stage"] for r in recs if "loss" in r} == {0, 1, 2}
    final = [r for r in recs if "val_action_mse" in r][-1]
    assert np.isfinite(final["val_action_mse"]) and np.isfinite(final["val_nll"])
    assert any(p.name.startswith("best-step") for p in (out / "checkpoints").iterdir())
    assert (out / "tb").is_dir()
    policy = Policy.load(path)
    assert policy.head.ready and policy.nfe() == 6  # 3 blocks × 1 midpoint step (2 evaluations)
    obs = {"agent_pos": torch.zeros(2, 2, 2), "goal_pos": torch.zeros(2, 2, 2), "obstacles": torch.zeros(2, 2, 3)}
    chunk = policy.predict_action_chunk(obs, noise=torch.zeros(2, 16, 2))
    assert chunk.shape == (2, 16, 2) and torch.isfinite(chunk).all()


def test_fm_and_regression_heads_train_one_stage(toy_zarr, tmp_path):
    for kind in ("fm", "regression"):  # block_steps (an LFM setting in a shared config) does not apply
        train(tiny_config(toy_zarr, tmp_path / kind, kind=kind, total_steps=10,
                          **{"policy.head.block_steps": [0.2, 0.2, 0.6]}), progress=False)
        assert {r["stage"] for r in metrics(tmp_path / kind) if "loss" in r} == {0}


def test_block_steps_give_each_lfm_block_its_share_of_the_steps(toy_zarr, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(toy_zarr, out, total_steps=20, log_every=1, **{"policy.head.block_steps": [0.25, 0.25, 0.5]}),
          progress=False)
    last = {}
    for r in metrics(out):
        if "loss" in r:
            last[r["stage"]] = max(last.get(r["stage"], 0), r["stage_step"])
    assert last == {0: 5, 1: 5, 2: 10}  # the free (last) block trains half of the 20 steps


def test_resume_after_kill_continues_mid_chain(toy_zarr, tmp_path):
    out = tmp_path / "run"
    cfg_path = tmp_path / "cfg.json"
    tiny_config(toy_zarr, out, total_steps=300).to_json(cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lfm_policy.cli", "train", "--config", str(cfg_path), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "checkpoints" / "latest" / "train_state.json"
    step = kill_after_checkpoint(proc, latest, 110)  # once block 2 (stage 1) is under way
    assert 110 <= step < 300, step
    saved = json.loads(latest.read_text())["progress"]
    assert saved["stage"] == 1 and saved["stage_started"]
    train(TrainConfig.from_json(cfg_path), resume=True, progress=False)
    recs = [r for r in metrics(out) if "loss" in r]
    resumed = [r for r in recs if r["step"] > saved["global_step"]]
    assert resumed[0]["stage"] == 1 and resumed[-1]["step"] == 300
    final = json.loads((out / "checkpoints" / "latest" / "train_state.json").read_text())["progress"]
    assert final["stage"] == 3 and final["global_step"] == 300


def test_ddp_two_gloo_processes_keep_weights_in_sync(toy_zarr, tmp_path):
    out = tmp_path / "ddp"
    cfg_path = tmp_path / "cfg.json"
    tiny_config(toy_zarr, out, total_steps=12, device="cpu").to_json(cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                    str(Path(__file__).with_name("ddp_train_worker.py")), str(cfg_path)],
                   env=env, check=True, capture_output=True, timeout=300)
    sums = [float((out / f"checksum_rank{r}.txt").read_text()) for r in (0, 1)]
    assert sums[0] == sums[1]
    assert (out / "checkpoints" / "latest" / "model.safetensors").exists()
    assert [r["step"] for r in metrics(out) if "loss" in r][-1] == 12
