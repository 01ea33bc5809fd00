import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import pytest
from eval_helpers import tiny_train_config

from lfm_policy.cli import main as cli_main
from lfm_policy.train import train

HERE = Path(__file__).resolve().parent

EPISODE_KEYS = {"index", "seed", "success", "return", "length", "mode", "error", "video", "collision"}
SUMMARY_KEYS = {"n_episodes", "n_success", "success_rate", "success_ci95", "mean_return", "mean_length", "n_errors",
                "n_collisions", "success_modes", "chunk_latency_ms", "wall_s", "episodes_per_min", "interrupted"}


def test_eval_cli_writes_results_report_and_videos(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["eval", str(tiny_checkpoint), "--task", "toy/point-obstacle", "--episodes", "4", "--n-envs", "2",
            "--videos", "2", "--nfe", "2", "--solver", "euler", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    assert "success" in capsys.readouterr().out
    rec = json.loads((out / "results.json").read_text())
    assert rec["schema_version"] == 2 and rec["task"] == "toy/point-obstacle" and rec["n_envs"] == 2
    assert rec["environment"]["task"] == "toy/point-obstacle" and len(rec["environment"]["fingerprint"]) == 64
    assert rec["nfe"] == 2 * 2 * 1 and rec["solver"]["method"] == "euler" and rec["solver"]["steps"] == 2
    assert len(rec["checkpoint_sha256"]) == 64 and len(rec["config_sha256"]) == 64
    assert {"lfm_policy", "torch", "python"} <= set(rec["versions"])
    assert SUMMARY_KEYS <= set(rec["summary"]) and rec["summary"]["n_episodes"] == 4
    lat = rec["summary"]["chunk_latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] and lat["n_calls"] > 0
    lo, hi = rec["summary"]["success_ci95"]
    assert 0 <= lo <= rec["summary"]["success_rate"] <= hi <= 1
    assert [e["seed"] for e in rec["episodes"]] == [100000, 100001, 100002, 100003]
    assert all(set(e) == EPISODE_KEYS for e in rec["episodes"])
    videos = sorted((out / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["episode_0000_seed100000.mp4", "episode_0001_seed100001.mp4"]
    assert rec["episodes"][0]["video"] == "videos/episode_0000_seed100000.mp4" and rec["episodes"][2]["video"] is None
    for i, video in enumerate(videos):  # each video holds its own episode, also with 2 envs in parallel
        frames = imageio.mimread(video)
        assert len(frames) == rec["episodes"][i]["length"] + 1 and frames[0].shape[0] >= 256
    report = (out / "report.md").read_text()
    assert "| episodes | success |" in report and "100003" in report
    assert "head `lfm`, solver euler×2, NFE 4 per chunk" in report


def test_eval_nfe_sweep_and_compare_plot(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli_main(["eval", str(tiny_checkpoint), "--task", "toy/point-obstacle", "--episodes", "3", "--nfe", "1",
                     "3", "--out", str(out), "--no-progress"]) == 0
    runs = [out / "steps-1", out / "steps-3"]
    nfes = [json.loads((r / "results.json").read_text())["nfe"] for r in runs]
    assert nfes == [2 * 1 * 2, 2 * 3 * 2]  # 2 blocks × steps × midpoint (2 evaluations per step)
    capsys.readouterr()
    plot = tmp_path / "cmp.png"
    assert cli_main(["compare", *map(str, runs), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "| steps-1 |" in table and "| steps-3 |" in table
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_cli_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    assert cli_main(["compare", str(tmp_path)]) == 1
    assert "no results.json" in capsys.readouterr().err
    assert cli_main(["eval", str(tmp_path), "--task", "toy/point-obstacle", "--out", str(tmp_path / "x")]) == 1
    assert "not a checkpoint" in capsys.readouterr().err


def test_eval_ctrl_c_writes_partial_results(tiny_checkpoint, tmp_path):
    out = tmp_path / "partial"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "lfm_policy.cli", "eval", str(tiny_checkpoint), "--task", "toy/point-obstacle",
           "--episodes", "100000", "--videos", "1", "--out", str(out), "--no-progress"]
    # The child gets the default SIGINT disposition: a test run started in the background (`cmd &`,
    # nohup) ignores SIGINT, the ignore is inherited, and Python then installs no KeyboardInterrupt.
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err_file:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "videos").is_dir() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, log.read_text()
    rec = json.loads((out / "results.json").read_text())
    assert rec["summary"]["interrupted"] and 1 <= rec["summary"]["n_episodes"] < 100000
    assert "interrupted" in (out / "report.md").read_text()


def test_trainer_logs_rollout_success(toy_zarr_eval, tmp_path):
    out = tmp_path / "run"
    train(tiny_train_config(toy_zarr_eval, out, rollout_every=10, rollout_task="toy/point-obstacle",
                            rollout_episodes=3, total_steps=20), progress=False)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rollouts = [r for r in recs if "rollout_success_rate" in r]
    # 2 blocks × 10 steps: the head can sample only after block 2, so one rollout at the end (step 20)
    assert [r["step"] for r in rollouts] == [20]
    assert rollouts[0]["rollout_episodes"] == 3 and 0 <= rollouts[0]["rollout_success_rate"] <= 1
    with pytest.raises(Exception, match="rollout_task"):
        tiny_train_config(toy_zarr_eval, out, rollout_every=5)


def test_eval_cli_diffusion_samplers(toy_zarr_eval, tmp_path, tiny_checkpoint, capsys):
    """One DDIM-trained diffusion checkpoint evaluated with DDPM-100 and with a DDIM-k sweep."""
    ckpt = train(tiny_train_config(toy_zarr_eval, tmp_path / "run", **{"policy.head.kind": "diffusion"}),
                 progress=False)
    base = ["eval", str(ckpt), "--task", "toy/point-obstacle", "--episodes", "1", "--no-progress"]
    assert cli_main([*base, "--solver", "ddpm", "--out", str(tmp_path / "ddpm")]) == 0
    rec = json.loads((tmp_path / "ddpm" / "results.json").read_text())
    assert rec["nfe"] == 100 and rec["solver"] == {"sampler": "ddpm", "steps": None}
    assert cli_main([*base, "--nfe", "2", "5", "--out", str(tmp_path / "ddim")]) == 0
    assert [json.loads((tmp_path / "ddim" / f"steps-{k}" / "results.json").read_text())["nfe"]
            for k in (2, 5)] == [2, 5]
    capsys.readouterr()
    assert cli_main([*base, "--solver", "euler", "--out", str(tmp_path / "x")]) == 1
    assert "ddim or ddpm" in capsys.readouterr().err
    assert cli_main(["eval", str(tiny_checkpoint), "--task", "toy/point-obstacle", "--solver", "ddpm",
                     "--out", str(tmp_path / "y")]) == 1
    assert "ddim/ddpm for diffusion" in capsys.readouterr().err
