"""Image policies end to end: collect from pixels, train, evaluate at the policy's resolution; an encoder
trained by one run and frozen in another."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lfm_policy import Policy
from lfm_policy.checkpoint import WEIGHTS, init_encoder
from lfm_policy.cli import main as cli_main
from lfm_policy.config import ConfigError
from lfm_policy.errors import CheckpointError
from lfm_policy.eval.environment import policy_camera_kwargs
from lfm_policy.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16  # pixels: the smallest toy camera the tests can see the scene in


@pytest.fixture(scope="module")
def toy_pixels(tmp_path_factory):
    """12 expert episodes of the toy task with a 16 x 16 top camera."""
    path = tmp_path_factory.mktemp("toy_px") / "toy.zarr"
    assert cli_main(["collect", "--task", "toy/point-obstacle", "--episodes", "12", "--images", "--image-size",
                     str(SIZE), "--out", str(path), "--no-progress"]) == 0
    return path


def image_config(data, out, kind="lfm", **kw) -> TrainConfig:
    cfg = TrainConfig.from_json(ROOT / "configs" / "toy_image_cpu.json")
    return cfg.with_overrides([
        f"data.path={data}", f"out_dir={out}", f"policy.head.kind={kind}", "policy.head.chain.n_blocks=2",
        "policy.head.net.mlp.width=32", "policy.head.net.mlp.depth=1", "policy.head.net.mlp.time_dim=16",
        "policy.encoder.small_cnn_channels=[16, 16]", "policy.encoder.num_keypoints=4",
        "policy.encoder.rgb_feature_dim=8", "policy.encoder.crop_shape=[14, 14]", "total_steps=8", "batch_size=8",
        "val_every=4", "checkpoint_every=4", "data.val_ratio=0.2", "device=cpu",
        *[f"{k}={json.dumps(v)}" for k, v in kw.items()]])


def test_pixels_only_policy_trains_and_evaluates_at_its_resolution(toy_pixels, tmp_path, capsys):
    ckpt = train(image_config(toy_pixels, tmp_path / "run"), progress=False)
    policy = Policy.load(ckpt)
    assert policy.spec.image_keys == ("top_image",) and set(policy.spec.obs_shapes) == {"top_image"}
    assert policy.spec.obs_shapes["top_image"] == (SIZE, SIZE, 3)
    # The toy env renders 64 px by default: eval makes it at the policy's 16 px without being told.
    out = tmp_path / "eval"
    assert cli_main(["eval", str(ckpt), "--task", "toy/point-obstacle", "--episodes", "2", "--out", str(out),
                     "--no-progress"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["environment"]["env_kwargs"]["image_size"] == SIZE
    assert record["environment"]["observation"]["top_image"][0] == [SIZE, SIZE, 3]
    assert record["summary"]["n_episodes"] == 2 and record["summary"]["n_errors"] == 0
    assert "success" in capsys.readouterr().out
    # so does the control loop (a SimRobot made from the checkpoint's camera)
    assert cli_main(["control", str(ckpt), "--task", "toy/point-obstacle", "--episodes", "1", "--rate", "100"]) == 0
    assert "over 1 episodes" in capsys.readouterr().out


def test_encoder_from_another_run_stays_frozen(toy_pixels, tmp_path):
    fm = train(image_config(toy_pixels, tmp_path / "fm", kind="fm"), progress=False)
    fm_state = load_file(str(Path(fm) / WEIGHTS))
    lfm = train(image_config(toy_pixels, tmp_path / "lfm", init_encoder_from=str(fm),
                             **{"policy.encoder_training": "frozen"}), progress=False)
    policy = Policy.load(lfm)
    for name, value in policy.encoder.state_dict().items():  # both copies equal the FM run's EMA encoder
        torch.testing.assert_close(value, fm_state[f"ema_encoder.{name}"], rtol=0, atol=0)
        torch.testing.assert_close(policy.ema_encoder.state_dict()[name], value, rtol=0, atol=0)
    assert not policy.encoder_trains(0) and not policy.encoder_trains(1)


def test_frozen_encoder_and_init_encoder_from_errors(toy_pixels, toy_zarr, tmp_path):
    with pytest.raises(ConfigError, match="frozen"):
        image_config(toy_pixels, tmp_path / "a", **{"policy.encoder_training": "frozen"})
    with pytest.raises(ConfigError, match="init_encoder_from"):
        image_config(toy_pixels, tmp_path / "b", init_from="x", init_encoder_from="y")
    lowdim = TrainConfig.from_json(ROOT / "configs" / "toy_lowdim.json").with_overrides([
        f"data.path={toy_zarr}", f"out_dir={tmp_path / 'low'}", "policy.head.kind=regression", "total_steps=2",
        "batch_size=8", "val_every=2", "checkpoint_every=2", "policy.head.net.mlp.width=16"])
    low_ckpt = train(lowdim, progress=False)
    img_ckpt = train(image_config(toy_pixels, tmp_path / "img", kind="regression", total_steps=2), progress=False)
    policy = Policy.load(img_ckpt)
    with pytest.raises(CheckpointError, match="needs observation 'agent_pos'"):
        init_encoder(policy, low_ckpt)
    other = image_config(toy_pixels, tmp_path / "wide", kind="regression", total_steps=2,
                         **{"policy.encoder.small_cnn_channels": [16, 32]})
    wide = train(other, progress=False)
    with pytest.raises(CheckpointError, match="encoder config"):
        init_encoder(policy, wide)


def test_policy_camera_kwargs():
    assert policy_camera_kwargs("toy/point-obstacle", {"top_image": (32, 32, 3)}, {}) == {"image_size": 32}
    assert policy_camera_kwargs("toy/point-obstacle", {"top_image": (32, 32, 3)}, {"image_size": 64}) == \
        {"image_size": 64}  # what the user said wins
    assert policy_camera_kwargs("metaworld/reach-v3", {"corner3_image": (48, 48, 3)}, {}) == \
        {"image_size": 48, "camera": "corner3"}
    cams = {"agentview_image": (48, 48, 3), "robot0_eye_in_hand_image": (48, 48, 3)}
    assert policy_camera_kwargs("robosuite/Lift", cams, {}) == \
        {"image_size": 48, "cameras": ["agentview", "robot0_eye_in_hand"]}
    assert policy_camera_kwargs("robosuite/Lift", {"agentview_image": (48, 64, 3)}, {}) == \
        {"cameras": ["agentview"]}  # not square: left to the env
    assert policy_camera_kwargs("gym/Pendulum-v1", {"side_image": (84, 84, 3)}, {"a": 1}) == {"a": 1}
    assert policy_camera_kwargs("toy/point-obstacle", {}, {}) == {}


def test_fm_first_trains_the_encoder_with_an_fm_head_then_freezes_it(toy_pixels, tmp_path):
    out = tmp_path / "run"
    ckpt = train(image_config(toy_pixels, out, total_steps=9, **{"policy.encoder_training": "fm_first"}),
                 progress=False)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in recs if "loss" in r} == {0, 1, 2}  # the FM stage, then 2 blocks
    policy = Policy.load(ckpt)
    assert policy.n_stages == 3 and policy.head.ready and policy.nfe() == 4
    assert policy.encoder_trains(0) and not policy.encoder_trains(1) and not policy.encoder_trains(2)
    fm_params = {id(p) for p in policy.encoder_head.stage_parameters(0)}  # (its EMA copy is not trained)
    stage0 = {id(p) for p in policy.stage_parameters(0)}
    assert fm_params <= stage0 and not fm_params & {id(p) for p in policy.stage_parameters(1)}
    assert not {id(p) for p in policy.head.parameters()} & stage0  # no LFM block trains in the FM stage
    chunk = policy.predict_action_chunk({"top_image": torch.zeros(1, 2, SIZE, SIZE, 3, dtype=torch.uint8)})
    assert chunk.shape == (1, 16, 2) and torch.isfinite(chunk).all()
    # distilling it keeps the FM head's weights (they load) but trains only the students
    assert cli_main(["distill", str(ckpt), "--out", str(tmp_path / "d"), "--steps", "2", "--no-progress"]) == 0
    student = Policy.load(tmp_path / "d" / "checkpoints" / "latest")
    assert student.n_stages == 2 and student.nfe() == 2
    window = {"top_image": torch.randint(0, 256, (3, 2, SIZE, SIZE, 3), dtype=torch.uint8)}
    torch.testing.assert_close(student.encode(window), policy.encode(window), rtol=0, atol=0)  # same EMA encoder
    # other heads (one stage) and weightless low-dim encoders: as first_stage
    fm = train(image_config(toy_pixels, tmp_path / "fm", kind="fm", total_steps=2,
                            **{"policy.encoder_training": "fm_first"}), progress=False)
    assert Policy.load(fm).encoder_head is None and Policy.load(fm).n_stages == 1
