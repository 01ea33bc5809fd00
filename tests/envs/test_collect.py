import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import collect_flaky_plugin  # noqa: F401  (registers the test/* tasks)
import numpy as np
import pytest

from lfm_policy.cli import main
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.envs import registry
from lfm_policy.envs.collect import CollectConfig, collect
from lfm_policy.envs.rollout import iter_episodes
from lfm_policy.errors import DataError, LfmPolicyError

PLUGIN_DIR = str(Path(__file__).parent)


def read(path):
    buf = ReplayBuffer.open(path)
    episodes = [buf.get_episode(i) for i in range(buf.n_episodes)]
    return buf, episodes


def test_collect_cli_writes_zarr_and_counts_discarded(tmp_path, capsys):
    out = tmp_path / "demo.zarr"
    argv = ["collect", "--task", "test/flaky-toy", "--import", "collect_flaky_plugin", "--episodes", "6",
            "--seed", "10", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "wrote 6 episodes" in stdout and "discarded 2 failed episode(s)" in stdout
    buf, episodes = read(out)
    assert buf.n_episodes == 6
    assert buf.attrs["task"] == "test/flaky-toy"
    assert buf.attrs["seeds"] == [10, 11, 13, 14, 16, 17]  # 12 and 15 fail (seed % 3 == 0)
    assert buf.attrs["n_discarded"] == 2 and buf.attrs["discarded_seeds"] == [12, 15]
    assert sum(buf.attrs["modes"].values()) == 6
    assert set(buf.keys) == {"agent_pos", "goal_pos", "obstacles", "action"}
    for ep in episodes:
        assert ep["action"].dtype == np.float32 and ep["action"].shape[1] == 2
        assert ep["agent_pos"].dtype == np.float32 and ep["agent_pos"].shape == (len(ep["action"]), 2)
    # the first observation of each episode is the env's reset state for the recorded seed
    env = registry.make_env("toy/point-obstacle")
    for seed, ep in zip(buf.attrs["seeds"], episodes):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(ep["agent_pos"][0], obs["agent_pos"])
    assert buf.get_episode_attrs(2)["seed"] == 13 and buf.get_episode_attrs(2)["mode"] in ("left", "right")


def test_keep_failed_keeps_every_attempt(tmp_path):
    cfg = CollectConfig(
        task="test/flaky-toy", n_episodes=4, seed=0, keep_failed=True, plugins=("collect_flaky_plugin",)
    )
    res = collect(cfg, tmp_path / "all.zarr")
    assert res.n_kept == 4 and res.n_discarded == 0 and res.seeds == [0, 1, 2, 3]
    buf, _ = read(tmp_path / "all.zarr")
    assert [buf.get_episode_attrs(i)["success"] for i in range(4)] == [False, True, True, False]


def test_output_identical_for_one_and_two_workers(tmp_path):
    paths = {}
    for workers in (1, 2):
        cfg = CollectConfig(task="toy/point-two-obstacles", n_episodes=5, seed=3, images=True, workers=workers)
        paths[workers] = tmp_path / f"w{workers}.zarr"
        res = collect(cfg, paths[workers])
        assert res.n_kept == 5
    (buf1, eps1), (buf2, eps2) = read(paths[1]), read(paths[2])
    assert dict(buf1.attrs) == dict(buf2.attrs)
    assert len(eps1) == len(eps2) == 5
    for a, b in zip(eps1, eps2):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert eps1[0]["top_image"].dtype == np.uint8 and eps1[0]["top_image"].shape[1:] == (64, 64, 3)


def test_worker_errors_reach_the_caller():
    cfg = CollectConfig(task="test/broken", n_episodes=2, workers=2, plugins=("collect_flaky_plugin",))
    with pytest.raises(LfmPolicyError, match="this env cannot be created"):
        list(iter_episodes(cfg.recipe(), range(4), workers=2))


def test_existing_output_and_overwrite(tmp_path, capsys):
    out = tmp_path / "x.zarr"
    base = ["collect", "--task", "toy/point-obstacle", "--episodes", "2", "--out", str(out), "--no-progress"]
    assert main(base) == 0
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "Traceback" not in err
    assert main(base + ["--overwrite", "--seed", "7"]) == 0
    assert ReplayBuffer.open(out).attrs["seeds"] == [7, 8]


def test_missing_output_folders_are_created(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "x.zarr"
    assert main(["collect", "--task", "toy/point-obstacle", "--episodes", "1", "--out", str(out), "--no-progress"]) == 0
    assert ReplayBuffer.open(out).n_episodes == 1
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "x.zarr"
    assert main(["collect", "--task", "toy/point-obstacle", "--episodes", "1", "--out", str(bad), "--no-progress"]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_unknown_task_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "x.zarr"
    assert main(["collect", "--task", "toy/point", "--episodes", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown task 'toy/point'" in err and "did you mean" in err
    assert not out.exists()


def test_killed_collection_never_leaves_a_half_written_output(tmp_path):
    out = tmp_path / "big.zarr"
    cmd = [sys.executable, "-m", "lfm_policy.cli", "collect", "--task", "toy/point-obstacle", "--episodes",
           "100000", "--out", str(out), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # writing has started
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()


def test_no_success_writes_nothing(tmp_path):
    cfg = CollectConfig(task="test/always-fail", n_episodes=2, max_attempts=3, plugins=("collect_flaky_plugin",))
    with pytest.raises(DataError, match="no successful episode in 3 attempts"):
        collect(cfg, tmp_path / "x.zarr")
    assert list(tmp_path.iterdir()) == []


def test_shortfall_warns(tmp_path, capsys):
    argv = ["collect", "--task", "test/flaky-toy", "--import", "collect_flaky_plugin", "--episodes", "5",
            "--max-attempts", "5", "--out", str(tmp_path / "x.zarr"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 3 episodes" in captured.out and "only 3 of 5 episodes" in captured.err


def test_robomimic_format_needs_env_meta(tmp_path, capsys):
    out = tmp_path / "toy.hdf5"
    assert main(["collect", "--task", "toy/point-obstacle", "--episodes", "2", "--out", str(out), "--no-progress"]) == 1
    assert "needs an env with env_meta" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_collect_subprocess_cli(tmp_path):
    out = tmp_path / "sub.zarr"
    env = dict(os.environ, PYTHONPATH=PLUGIN_DIR)
    res = subprocess.run(
        [sys.executable, "-m", "lfm_policy.cli", "collect", "--task", "toy/point-obstacle", "--episodes", "3",
         "--out", str(out), "--images"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "wrote 3 episodes" in res.stdout and "100%" in res.stderr  # progress bar on stderr
    assert ReplayBuffer.open(out).n_episodes == 3


def test_config_validation():
    from lfm_policy.config import ConfigError

    with pytest.raises(ConfigError, match="n_episodes"):
        CollectConfig(n_episodes=0)
    with pytest.raises(ConfigError, match="max_attempts"):
        CollectConfig(n_episodes=5, max_attempts=3)
    assert CollectConfig(n_episodes=5).attempts == 20


def test_env_args_reach_the_env_and_bad_ones_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "small.zarr"
    argv = ["collect", "--task", "toy/point-obstacle", "--episodes", "2", "--images", "--image-size", "32",
            "--env-arg", "max_step=0.04", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    buf = ReplayBuffer.open(out)
    assert buf.key_spec("top_image")[0] == (32, 32, 3)
    assert buf.attrs["env_kwargs"] == {"image_size": 32, "max_step": 0.04}
    steps = np.diff(buf.get_episode(0)["agent_pos"], axis=0)
    assert np.linalg.norm(steps, axis=1).max() <= 0.04 * np.sqrt(2) + 1e-6
    for bad in ("max_stp=1", "=3"):
        assert main(argv[:-3] + ["--env-arg", bad, "--out", str(tmp_path / "b.zarr"), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ("max_stp" in err or "KEY=VALUE" in err)


def _staged(out):
    return out.with_name(out.name + ".collect.tmp")


def _same_buffers(a, b):
    (buf_a, eps_a), (buf_b, eps_b) = read(a), read(b)
    assert dict(buf_a.attrs) == dict(buf_b.attrs)
    assert len(eps_a) == len(eps_b)
    for x, y in zip(eps_a, eps_b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    for i in range(buf_a.n_episodes):
        assert buf_a.get_episode_attrs(i) == buf_b.get_episode_attrs(i)
        fa, fb = buf_a.get_final_obs(i), buf_b.get_final_obs(i)
        assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_killed_collection_resumes_to_the_requested_count_with_the_same_seeds(tmp_path, capsys):
    out, reference = tmp_path / "demo.zarr", tmp_path / "reference.zarr"
    argv = ["collect", "--task", "test/flaky-toy", "--import", "collect_flaky_plugin", "--episodes", "40",
            "--seed", "3", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": PLUGIN_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lfm_policy.cli", *argv, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n = 0
    try:
        deadline = time.time() + 60
        while n < 8:  # kill once a few episodes are committed
            assert time.time() < deadline and proc.poll() is None
            if _staged(out).exists():
                try:
                    n = ReplayBuffer.open(_staged(out)).n_episodes
                except Exception:  # noqa: BLE001  (the store is still being created)
                    pass
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists() and n < 40
    assert main([*argv, "--out", str(out)]) == 1  # not resumed, not overwritten: refused
    err = capsys.readouterr().err
    assert "interrupted collection" in err and "--resume" in err
    assert main([*argv, "--seed", "4", "--out", str(out), "--resume"]) == 1
    assert "seed: 3 there, 4 now" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert "from the interrupted run" in capsys.readouterr().out
    assert not _staged(out).exists()
    assert main([*argv, "--out", str(reference)]) == 0
    _same_buffers(out, reference)
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 40 and buf.attrs["discarded_seeds"][:3] == [3, 6, 9]


def test_interrupted_collection_keeps_its_episodes_for_resume(tmp_path):
    def interrupt(ep, kept, n_kept, n_discarded):
        if n_kept == 3:
            raise KeyboardInterrupt

    cfg = CollectConfig(task="toy/point-obstacle", n_episodes=6, seed=2)
    with pytest.raises(KeyboardInterrupt) as info:
        collect(cfg, tmp_path / "x.zarr", on_episode=interrupt)
    assert not (tmp_path / "x.zarr").exists() and "--resume" in info.value.__notes__[0]
    # the interrupt came while the third episode was being reported, before it was written
    assert ReplayBuffer.open(_staged(tmp_path / "x.zarr")).n_episodes == 2
    res = collect(cfg.replace(n_episodes=8), tmp_path / "x.zarr", resume=True)  # and ask for more
    assert res.n_kept == 8 and res.n_resumed == 2 and res.seeds == list(range(2, 10))
    collect(cfg.replace(n_episodes=8), tmp_path / "ref.zarr")
    _same_buffers(tmp_path / "x.zarr", tmp_path / "ref.zarr")
    with pytest.raises(FileExistsError, match="nothing to resume"):
        collect(cfg, tmp_path / "x.zarr", resume=True)


def test_a_live_collection_is_never_touched(tmp_path):
    out = tmp_path / "x.zarr"
    live = ReplayBuffer.create(out, staging=_staged(out), atomic=True)  # this process holds the lock
    try:
        for flag in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(LfmPolicyError, match="another lfm-policy collect"):
                collect(CollectConfig(task="toy/point-obstacle", n_episodes=1), out, **flag)
    finally:
        live.discard()


def test_collected_episodes_keep_their_final_observation(tmp_path):
    out = tmp_path / "x.zarr"
    collect(CollectConfig(task="toy/point-obstacle", n_episodes=2, seed=5), out)
    buf = ReplayBuffer.open(out)
    env = registry.make_env("toy/point-obstacle")
    ep = buf.get_episode(0)
    env.reset(seed=5)
    for a in ep["action"]:
        obs, *_ = env.step(a)
    final = buf.get_final_obs(0)
    np.testing.assert_array_equal(final["agent_pos"], obs["agent_pos"])


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "x.zarr"
    stale_dir = tmp_path / "x.zarr.0123abcd.tmp"  # an older version's staging folder, its writer dead
    stale_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale_file = tmp_path / f".x.zarr.{int(dead.stdout)}.tmp"  # an HDF5 export killed midway
    stale_file.write_bytes(b"x")
    collect(CollectConfig(task="toy/point-obstacle", n_episodes=1), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]
