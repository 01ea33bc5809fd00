"""Simulated operators (envs/operators.py) and their collection plumbing: --operators, --modes, filters."""

from collections import Counter

import h5py
import numpy as np
import pytest

from lfm_policy.cli import main
from lfm_policy.config import ConfigError
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.envs import registry
from lfm_policy.envs.cli import _parse_operators
from lfm_policy.envs.collect import CollectConfig, collect, episode_filters
from lfm_policy.envs.operators import (
    PROFILES,
    OperatorExpert,
    OperatorProfile,
    choose_operator,
    gripper_dims_for,
)
from lfm_policy.envs.rollout import rollout_episode
from lfm_policy.errors import LfmPolicyError

TOY = "toy/point-obstacle"


def _toy_rollout(expert_factory, seed):
    env = registry.make_env(TOY)
    try:
        return rollout_episode(env, expert_factory(env), seed, 80)
    finally:
        env.close()


def test_expert_profile_gives_byte_identical_actions():
    plain = _toy_rollout(lambda env: registry.make_expert(TOY, env), 4)
    wrapped = _toy_rollout(lambda env: OperatorExpert(registry.make_expert(TOY, env), "expert"), 4)
    assert plain.actions.tobytes() == wrapped.actions.tobytes()
    assert plain.operator is None and wrapped.operator == "expert" and wrapped.mode == plain.mode


def test_operators_perturb_deterministically_per_seed():
    def worse(env):
        return OperatorExpert(registry.make_expert(TOY, env), "worse", action_low=env.action_space.low,
                              action_high=env.action_space.high)

    plain = _toy_rollout(lambda env: registry.make_expert(TOY, env), 7)
    a, b, other = _toy_rollout(worse, 7), _toy_rollout(worse, 7), _toy_rollout(worse, 8)
    assert a.actions.tobytes() == b.actions.tobytes()  # same seed: same perturbations
    n = min(len(a.actions), len(plain.actions))
    assert not np.allclose(a.actions[:n], plain.actions[:n])
    assert not np.array_equal(a.actions[: len(other.actions)], other.actions[: len(a.actions)])
    assert a.actions.min() >= -1 and a.actions.max() <= 1  # clipped to the action space
    assert a.operator == "worse"


class _FixedExpert:
    """Always the same action; counts its calls and what reset got."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)
        self.calls = 0
        self.seeds = []
        self.mode = "left"

    def reset(self, seed=None):
        self.seeds.append(seed)

    def act(self, obs):
        self.calls += 1
        return self.action.copy()


def test_pauses_stop_motion_and_hold_the_gripper_command():
    profile = OperatorProfile("pauser", pause_prob=1.0, pause_steps=3)
    base = _FixedExpert([0.5, -0.5, 0.2, 1.0])
    op = OperatorExpert(base, profile, gripper_dims=(3,))
    op.reset(seed=1)
    assert base.seeds == [1] and op.mode == "left" and op.operator == "pauser"
    actions = np.stack([op.act({}) for _ in range(9)])
    np.testing.assert_array_equal(actions[0], base.action)  # the first step is the expert's
    for t in (1, 2, 3, 5, 6, 7):  # then pauses of 3 steps, each after one expert step
        np.testing.assert_array_equal(actions[t], [0, 0, 0, 1.0])
    np.testing.assert_array_equal(actions[4], base.action)
    assert base.calls == 3  # the expert is not consulted during a pause


def test_speed_noise_and_corrections_touch_only_motion_dims():
    base = _FixedExpert([0.5, -0.5, 0.2, -1.0])
    slow = OperatorExpert(base, OperatorProfile("s", speed=0.5), gripper_dims=(3,))
    np.testing.assert_allclose(slow.act({}), [0.25, -0.25, 0.1, -1.0])
    profile = OperatorProfile("c", noise=0.1, correction_prob=1.0, correction_steps=2, correction_size=0.3)
    op = OperatorExpert(base, profile, gripper_dims=(3,), action_low=[-0.6] * 4, action_high=[0.6, 0.6, 0.6, 1])
    op.reset(seed=5)
    first = np.stack([op.act({}) for _ in range(6)])
    op.reset(seed=5)
    again = np.stack([op.act({}) for _ in range(6)])
    np.testing.assert_array_equal(first, again)
    assert np.all(first[:, 3] == -0.6)  # gripper untouched except for the clip to the bounds
    assert np.all(first[:, :3] <= 0.6) and np.all(first[:, :3] >= -0.6)
    assert not np.allclose(first[:, :3], base.action[:3])


def test_profile_validation_and_builtins():
    with pytest.raises(ConfigError, match="noise"):
        OperatorProfile("x", noise=-0.1)
    with pytest.raises(ConfigError, match="pause_steps"):
        OperatorProfile("x", pause_prob=0.5)
    with pytest.raises(ConfigError, match="name"):
        OperatorProfile("a/b")
    assert {"expert", "better", "okay", "worse"} <= set(PROFILES)
    assert PROFILES["expert"].is_identity and not PROFILES["better"].is_identity
    assert OperatorProfile.from_dict(PROFILES["okay"].to_dict()) == PROFILES["okay"]
    assert gripper_dims_for(TOY) == () and gripper_dims_for("metaworld/push-v3") == (3,)
    assert gripper_dims_for("robosuite/Lift") == (6,) and gripper_dims_for("nope/x") == ()


def test_choose_operator_is_deterministic_and_weighted():
    weights = {"better": 3.0, "worse": 1.0, "okay": 0.0}
    picks = [choose_operator(weights, s) for s in range(2000)]
    assert picks == [choose_operator({"okay": 0.0, "worse": 1.0, "better": 3.0}, s) for s in range(2000)]
    counts = Counter(picks)
    assert counts["okay"] == 0 and 0.7 < counts["better"] / 2000 < 0.8
    with pytest.raises(LfmPolicyError, match="unknown operator 'pro'.*better"):
        choose_operator({"pro": 1.0}, 0)


def test_cli_operator_weights_and_one_line_errors(tmp_path, capsys):
    assert _parse_operators(["better=2", "worse"]) == {"better": 2.0, "worse": 1.0}
    assert _parse_operators(None) is None
    for bad, needle in ((["pro"], "unknown operator 'pro'"), (["better=x"], "WEIGHT"),
                        (["better=-1"], "WEIGHT"), (["better", "better=2"], "twice"), (["okay=0"], "> 0")):
        argv = ["collect", "--task", TOY, "--episodes", "1", "--out", str(tmp_path / "x.zarr"), "--no-progress",
                "--operators", *bad]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "--operators" in err and needle in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="operators: unknown operator"):
        CollectConfig(operators={"pro": 1.0})


def _episode_attrs(path):
    buf = ReplayBuffer.open(path)
    return buf, [buf.get_episode_attrs(i) for i in range(buf.n_episodes)]


def test_operators_do_not_depend_on_workers_and_filters_list_the_episodes(tmp_path, capsys):
    paths = {}
    for workers in (1, 2):
        paths[workers] = tmp_path / f"w{workers}.zarr"
        argv = ["collect", "--task", TOY, "--episodes", "8", "--seed", "1", "--keep-failed", "--workers",
                str(workers), "--operators", "better=2", "okay", "worse", "--out", str(paths[workers]),
                "--no-progress"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "operators:" in out and "success by operator" in out
    (buf1, eps1), (buf2, eps2) = _episode_attrs(paths[1]), _episode_attrs(paths[2])
    assert dict(buf1.attrs) == dict(buf2.attrs) and eps1 == eps2
    ops = [a["operator"] for a in eps1]
    assert ops == [choose_operator({"better": 2, "okay": 1, "worse": 1}, s) for s in range(1, 9)]
    assert buf1.attrs["operators"] == dict(Counter(ops))
    filters = buf1.attrs["filters"]
    for name in set(ops):
        assert filters[name] == [i for i, o in enumerate(ops) if o == name]
    modes = [a.get("mode") for a in eps1]
    for mode in {m for m in modes if m is not None}:
        assert filters[f"mode_{mode}"] == [i for i, m in enumerate(modes) if m == mode]
    assert set(filters) == set(ops) | {f"mode_{m}" for m in modes if m is not None}

    # the robomimic export carries them as mask/<name>
    hdf5 = tmp_path / "w1.hdf5"
    assert main(["data", "export-robomimic", str(paths[1]), str(hdf5)]) == 0
    with h5py.File(hdf5, "r") as f:
        masks = {k: sorted(int(d.decode().split("_")[1]) for d in f["mask"][k][:]) for k in f["mask"]}
    assert masks == filters


def test_modes_restrict_the_expert(tmp_path, capsys):
    out = tmp_path / "left.zarr"
    assert main(["collect", "--task", TOY, "--episodes", "5", "--modes", "left", "--out", str(out),
                 "--no-progress"]) == 0
    buf, eps = _episode_attrs(out)
    assert [a["mode"] for a in eps] == ["left"] * 5 and "operator" not in eps[0]
    assert buf.attrs["modes"] == {"left": 5} and buf.attrs["filters"] == {"mode_left": [0, 1, 2, 3, 4]}
    assert buf.attrs["collect_config"]["modes"] == ["left"]
    capsys.readouterr()
    assert main(["collect", "--task", TOY, "--episodes", "1", "--modes", "up", "--out", str(tmp_path / "u.zarr"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "modes=['up']" in err and "'left', 'right'" in err and err.count("\n") == 1


def test_resumed_collection_keeps_operator_counts_and_filters(tmp_path):
    def interrupt(ep, kept, n_kept, n_discarded):
        if n_kept == 4:
            raise KeyboardInterrupt

    cfg = CollectConfig(task=TOY, n_episodes=7, seed=2, operators={"better": 1.0, "worse": 1.0})
    with pytest.raises(KeyboardInterrupt):
        collect(cfg, tmp_path / "x.zarr", on_episode=interrupt)
    # the same weights in another order resume the same collection
    res = collect(cfg.replace(operators={"worse": 1.0, "better": 1.0}), tmp_path / "x.zarr", resume=True)
    ref = collect(cfg, tmp_path / "ref.zarr")
    assert res.n_resumed == 3 and res.seeds == ref.seeds
    assert res.operators == ref.operators and res.filters == ref.filters
    (buf, eps), (buf_ref, eps_ref) = _episode_attrs(tmp_path / "x.zarr"), _episode_attrs(tmp_path / "ref.zarr")
    assert eps == eps_ref
    assert buf.attrs["operators"] == buf_ref.attrs["operators"] and buf.attrs["filters"] == buf_ref.attrs["filters"]
    assert sum(buf.attrs["operators"].values()) == 7


def test_episode_filters():
    assert episode_filters(["a", None, "b", "a"], ["left", "right", None, "left"]) == {
        "a": [0, 3], "b": [2], "mode_left": [0, 3], "mode_right": [1]}
    assert episode_filters([None], [None]) == {}
