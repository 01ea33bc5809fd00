import json

import numpy as np
import pytest
import torch

from lfm_policy import ActionQueue, Policy, PolicyConfig, PolicySpec
from lfm_policy.config import ConfigError
from lfm_policy.errors import CheckpointError, LfmPolicyError
from lfm_policy.flow import ChainConfig, SolverConfig
from lfm_policy.heads import HeadConfig, MLPConfig, NetConfig
from lfm_policy.nets.obs_encoder import ObsEncoderConfig
from lfm_policy.normalizer import LinearNormalizer

SPEC = PolicySpec(obs_shapes={"cam_image": (24, 24, 3), "pos": (3,)}, image_keys=("cam_image",), action_dim=2)


def make_policy(kind="lfm", encoder_training="first_stage"):
    torch.manual_seed(0)
    cfg = PolicyConfig(
        n_obs_steps=2, horizon=8, n_action_steps=4, encoder_training=encoder_training,
        encoder=ObsEncoderConfig(backbone="small_cnn", crop_shape=(20, 20), num_keypoints=8, rgb_feature_dim=16,
                                 small_cnn_channels=(16, 16)),
        head=HeadConfig(kind=kind, net=NetConfig(family="mlp", mlp=MLPConfig(width=32, depth=1, time_dim=16)),
                        chain=ChainConfig(n_blocks=3, sample_solver=SolverConfig(method="euler", steps=1))),
    )
    stats = {"action": {"min": np.array([-2.0, 0.0]), "max": np.array([2.0, 10.0])},
             "pos": {"min": np.zeros(3), "max": np.ones(3)}}
    return Policy(cfg, SPEC, LinearNormalizer.from_stats(stats))


def batch(b=4, to=2, h=8):
    g = torch.Generator().manual_seed(0)
    return {"obs": {"cam_image": torch.randint(0, 256, (b, to, 24, 24, 3), dtype=torch.uint8, generator=g),
                    "pos": torch.rand(b, to, 3, generator=g)},
            "action": torch.rand(b, h, 2, generator=g) * torch.tensor([4.0, 10.0]) - torch.tensor([2.0, 0.0]),
            "action_is_pad": torch.zeros(b, h, dtype=torch.bool)}


def test_policy_config_validates():
    with pytest.raises(ConfigError, match="n_action_steps"):
        PolicyConfig(n_obs_steps=2, horizon=8, n_action_steps=8)
    with pytest.raises(ConfigError, match="encoder_training"):
        PolicyConfig(encoder_training="never")


@pytest.mark.parametrize("kind", ["lfm", "fm", "diffusion", "regression"])
def test_loss_and_pure_prediction(kind):
    policy = make_policy(kind)
    b = batch()
    for stage in range(policy.head.n_stages):
        policy.begin_stage(stage)
        loss, info = policy.compute_loss(b, stage=stage)
        loss.backward()
        assert torch.isfinite(loss) and info["stage"] == stage
        policy.end_stage(stage)
    policy.eval()
    noise = torch.randn(4, 8, 2)
    chunk = policy.predict_action_chunk(b["obs"], noise=noise)
    assert chunk.shape == (4, 8, 2)
    if kind != "diffusion":
        torch.testing.assert_close(policy.predict_action_chunk(b["obs"], noise=noise), chunk)
    assert policy.executable_actions(chunk).shape == (4, 4, 2)
    torch.testing.assert_close(policy.executable_actions(chunk), chunk[:, 1:5])


def test_encoder_trains_with_the_first_stage_only_by_default():
    policy = make_policy("lfm")
    enc = {id(p) for p in policy.encoder.parameters()}
    assert enc <= {id(p) for p in policy.stage_parameters(0)}
    assert not enc & {id(p) for p in policy.stage_parameters(1)}
    every = make_policy("lfm", encoder_training="every_stage")
    assert {id(p) for p in every.encoder.parameters()} <= {id(p) for p in every.stage_parameters(2)}
    # and in stage 1 no gradient reaches the frozen encoder
    policy.begin_stage(0)
    policy.end_stage(0)
    policy.begin_stage(1)
    loss, _ = policy.compute_loss(batch(), stage=1)
    loss.backward()
    assert all(p.grad is None for p in policy.encoder.parameters())


def test_encoder_ema_is_used_at_inference_and_by_frozen_stages():
    policy = make_policy("lfm")
    lowdim = Policy(PolicyConfig(encoder=ObsEncoderConfig()), PolicySpec(obs_shapes={"pos": (3,)}, action_dim=2),
                    LinearNormalizer.from_stats({"action": {"min": np.zeros(2), "max": np.ones(2)},
                                                 "pos": {"min": np.zeros(3), "max": np.ones(3)}}))
    assert lowdim.ema_encoder is None  # concatenated low-dim keys: no weights, nothing to average
    opt = torch.optim.SGD(policy.stage_parameters(0), lr=0.5)
    policy.begin_stage(0)
    for _ in range(5):
        opt.zero_grad()
        policy.compute_loss(batch(), stage=0)[0].backward()
        opt.step()
        policy.after_step(0)
    assert int(policy.ema_encoder_step) == 5
    live, ema = policy.encoder.state_dict(), policy.ema_encoder.state_dict()
    assert any(not torch.equal(live[k], ema[k]) for k in live)  # decay > 0 after the first steps
    policy.end_stage(0)
    policy.begin_stage(1)
    policy.after_step(1)  # the encoder does not train in stage 1: its EMA stays put
    assert int(policy.ema_encoder_step) == 5
    policy.eval()
    obs = batch()["obs"]
    torch.testing.assert_close(policy.encode(obs), policy.ema_encoder(policy._prepare_obs(obs)))
    assert not torch.allclose(policy.encode(obs), policy.encode(obs, ema=False))
    # stage 1 conditions come from the EMA encoder (the one inference uses), without gradients
    seen = []
    policy.head.loss = lambda action, cond, **kw: seen.append(cond) or cond.sum()
    policy.compute_loss(batch(), stage=1)
    torch.testing.assert_close(seen[0], policy.encode(obs))
    assert not seen[0].requires_grad


def test_bad_observations_are_named():
    policy = make_policy()
    obs = batch()["obs"]
    with pytest.raises(LfmPolicyError, match="missing key.*'pos'"):
        policy.predict_action_chunk({"cam_image": obs["cam_image"]})
    with pytest.raises(LfmPolicyError, match="'pos': expected shape"):
        policy.predict_action_chunk({**obs, "pos": obs["pos"][:, :1]})
    with pytest.raises(LfmPolicyError, match="unknown key"):
        policy.normalizer.normalize_key("velocity", torch.zeros(3))


def test_clip_sample_keeps_chunks_in_the_training_action_range():
    policy = make_policy("fm")
    policy.head.sample = lambda cond, **kw: torch.full((cond.shape[0], 8, 2), 5.0)  # a wild sampler
    chunk = policy.predict_action_chunk(batch()["obs"])
    torch.testing.assert_close(chunk, torch.tensor([2.0, 10.0]).expand(4, 8, 2))  # the stats' max
    policy.config.head.clip_sample = False
    assert policy.predict_action_chunk(batch()["obs"])[0, 0, 0] == 2.0 + 4 * 2.0  # x = 5 unnormalized


def test_num_trained_params_counts_what_the_stages_optimize():
    policy = make_policy("lfm")
    trained = {id(q): q.numel() for stage in range(3) for q in policy.stage_parameters(stage)}
    assert policy.num_trained_params() == sum(trained.values())
    assert policy.num_trained_params() < sum(q.numel() for q in policy.parameters())  # EMA copies exist


def test_checkpoint_round_trip_without_pickle(tmp_path):
    policy = make_policy()
    for s in range(3):
        policy.begin_stage(s)
        policy.end_stage(s)
    policy.eval()
    obs, noise = batch()["obs"], torch.randn(4, 8, 2)
    expected = policy.predict_action_chunk(obs, noise=noise)
    path = policy.save(tmp_path / "ckpt", metadata={"step": 7})
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "policy.json"]
    assert not (tmp_path / "ckpt.tmp").exists()
    loaded = Policy.load(path)
    torch.testing.assert_close(loaded.predict_action_chunk(obs, noise=noise), expected)
    assert json.loads((path / "policy.json").read_text())["metadata"] == {"step": 7}
    # a checkpoint whose spec does not match the observations it will get is rejected
    with pytest.raises(CheckpointError, match="'pos' has shape"):
        Policy.load(path, expect_obs_shapes={"cam_image": (24, 24, 3), "pos": (4,)})
    with pytest.raises(CheckpointError, match="'pos'.*missing"):
        Policy.load(path, expect_obs_shapes={"cam_image": (24, 24, 3)})
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Policy.load(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        Policy.load(tmp_path)


def test_action_queue_executes_ta_actions_per_chunk():
    policy = make_policy("regression").eval()
    calls = []
    original = policy.predict_action_chunk

    def counting(obs, **kw):
        calls.append({k: v.clone() for k, v in obs.items()})
        return original(obs, **kw)

    policy.predict_action_chunk = counting
    q = ActionQueue(policy)
    frames = batch(b=1)["obs"]
    frame = {k: v[:, 0] for k, v in frames.items()}
    actions = [q.select_action(frame) for _ in range(9)]
    assert len(calls) == 3 and all(a.shape == (1, 2) for a in actions)
    # at reset the first frame is repeated to fill the To window
    torch.testing.assert_close(calls[0]["pos"][:, 0], calls[0]["pos"][:, 1])
    q.reset()
    q.select_action(frame)
    assert len(calls) == 4
