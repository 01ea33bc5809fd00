import subprocess
import sys

import pytest
import torch
from torch import nn

from lfm_policy.config import ConfigError
from lfm_policy.errors import LfmPolicyError
from lfm_policy.nets.obs_encoder import ObsEncoder, ObsEncoderConfig
from lfm_policy.nets.vision import ImageFeatureNet, SpatialSoftmax, crop_images

SMALL = ObsEncoderConfig(backbone="small_cnn", crop_shape=(28, 28), num_keypoints=8, rgb_feature_dim=16,
                         small_cnn_channels=(16, 32))
SHAPES = {"agentview_image": (3, 32, 32), "wrist.image": (3, 32, 32), "eef_pos": (3,), "gripper": (2,)}


def make_obs(shapes, b=2, to=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(b, to, *s, generator=g) for k, s in shapes.items()}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "cfg,shapes,to,expected",
    [
        (SMALL, SHAPES, 2, 2 * (2 * 16 + 5)),
        (SMALL.replace(share_rgb_model=True), SHAPES, 3, 3 * (2 * 16 + 5)),
        (SMALL.replace(lowdim_mlp_dims=(32, 8)), SHAPES, 2, 2 * (2 * 16 + 8)),
        (SMALL.replace(crop_shape=None), {"cam": (1, 20, 24)}, 1, 16),  # 1 channel, no crop
        (SMALL, {"eef_pos": (3,), "gripper": (2,)}, 2, 10),  # low-dim only: plain concat
    ],
)
def test_shapes_and_output_dim(cfg, shapes, to, expected):
    enc = ObsEncoder(cfg, shapes, to)
    assert enc.output_dim == expected == cfg.output_dim(shapes, to)
    out = enc(make_obs(shapes, b=3, to=to))
    assert out.shape == (3, expected) and torch.isfinite(out).all()


def test_lowdim_only_is_the_flattened_concat():
    shapes = {"b_pos": (3,), "a_grip": (2,)}
    enc = ObsEncoder(SMALL, shapes, 2)
    obs = make_obs(shapes)
    expected = torch.cat([obs["a_grip"], obs["b_pos"]], dim=-1).reshape(2, -1)  # sorted keys, frame-major
    torch.testing.assert_close(enc(obs), expected)


def test_frames_are_flattened_frame_major():
    """out = [features(frame 0), features(frame 1)]: a To=1 encoder with the same weights gives each part."""
    torch.manual_seed(0)
    enc2 = ObsEncoder(SMALL, SHAPES, 2).eval()
    enc1 = ObsEncoder(SMALL, SHAPES, 1).eval()
    enc1.load_state_dict(enc2.state_dict())
    obs = make_obs(SHAPES)
    out = enc2(obs)
    d = enc1.output_dim
    for f in range(2):
        one_frame = {k: v[:, f:f + 1] for k, v in obs.items()}
        torch.testing.assert_close(out[:, f * d:(f + 1) * d], enc1(one_frame))


def test_key_order_does_not_matter():
    torch.manual_seed(0)
    a = ObsEncoder(SMALL, SHAPES, 2).eval()
    b = ObsEncoder(SMALL, dict(reversed(list(SHAPES.items()))), 2).eval()
    b.load_state_dict(a.state_dict())
    obs = make_obs(SHAPES)
    torch.testing.assert_close(a(obs), b(dict(reversed(list(obs.items())))))


def test_resnet18_has_groupnorm_everywhere():
    net = ImageFeatureNet("resnet18", 3, num_keypoints=32, feature_dim=64, small_cnn_channels=(32,))
    mods = list(net.trunk.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)  # only the output standardization
    gns = [m for m in mods if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 20  # ResNet-18 has 20 BatchNorm layers: all replaced
    assert all(m.num_groups == m.num_channels // 16 for m in gns)
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Linear)) and m is not net.proj for m in mods)
    feats = net(torch.rand(2, 3, 76, 76))
    assert feats.shape == (2, 64)
    assert net.trunk(torch.rand(1, 3, 76, 76)).shape == (1, 512, 3, 3)  # DP's 84 -> 76 crop gives 3x3 maps


def test_resnet18_encoder_with_other_channel_count():
    enc = ObsEncoder(ObsEncoderConfig(crop_shape=(32, 32)), {"depth": (1, 36, 36)}, 1)
    assert enc(make_obs({"depth": (1, 36, 36)}, b=1, to=1)).shape == (1, 64)


@pytest.mark.parametrize("backbone", ["resnet18", "small_cnn"])
def test_encoders_have_no_batchnorm(backbone):
    enc = ObsEncoder(SMALL.replace(backbone=backbone), SHAPES, 2)
    mods = list(enc.modules())
    norms = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == [net.norm for net in enc.rgb_nets]  # only each camera's output standardization
    assert sum(isinstance(m, nn.GroupNorm) for m in mods) == (40 if backbone == "resnet18" else 4)


def test_shared_vs_per_camera_parameter_counts():
    per_cam = ObsEncoder(SMALL, SHAPES, 2)
    shared = ObsEncoder(SMALL.replace(share_rgb_model=True), SHAPES, 2)
    one_net = n_params(ImageFeatureNet("small_cnn", 3, 8, 16, (16, 32)))
    assert n_params(shared) == one_net
    assert n_params(per_cam) == 2 * one_net
    assert per_cam.output_dim == shared.output_dim


def test_spatial_softmax_keypoints_in_range_and_follow_a_blob():
    ss = SpatialSoftmax(1, num_keypoints=1)
    with torch.no_grad():
        ss.to_keypoints.weight.fill_(20.0)
        ss.to_keypoints.bias.zero_()

    def blob(cy, cx):
        img = torch.zeros(1, 1, 32, 32)
        img[0, 0, cy - 2:cy + 2, cx - 2:cx + 2] = 1.0
        return img

    top_left, bottom_right, top_right = (ss(blob(*c))[0, 0] for c in [(6, 6), (26, 26), (6, 26)])
    assert top_left[0] < -0.5 and top_left[1] < -0.5  # (x, y), y grows downwards
    assert bottom_right[0] > 0.5 and bottom_right[1] > 0.5
    assert top_right[0] > 0.5 and top_right[1] < -0.5
    torch.manual_seed(0)
    kp = SpatialSoftmax(8, 16)(torch.randn(4, 8, 5, 7) * 50)
    assert kp.shape == (4, 16, 2) and kp.abs().max() <= 1.0


def test_encoder_keypoints_move_with_the_blob():
    torch.manual_seed(0)
    net = ImageFeatureNet("small_cnn", 3, 8, 16, (16, 32)).eval()
    img = torch.zeros(2, 3, 32, 32)
    img[0, :, 4:10, 4:10] = 1.0
    img[1, :, 22:28, 22:28] = 1.0
    kp = net.keypoints(net.trunk(img))
    assert kp.abs().max() <= 1.0
    assert (kp[0] - kp[1]).abs().max() > 1e-3


def test_crop_windows():
    """Random crops are valid windows at varying offsets; eval crops are the center window."""
    h, w, ch, cw = 12, 10, 8, 6
    coords = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(200, 2, 1, 1)
    out = crop_images(coords, (ch, cw), random=True, generator=torch.Generator().manual_seed(0))
    top, left = (out[:, 0, 0, 0] // w).long(), (out[:, 0, 0, 0] % w).long()
    for i in range(200):
        torch.testing.assert_close(out[i], coords[i, :, top[i]:top[i] + ch, left[i]:left[i] + cw])
    assert set(top.tolist()) == set(range(h - ch + 1)) and set(left.tolist()) == set(range(w - cw + 1))
    center = crop_images(coords[:2], (ch, cw), random=False)
    torch.testing.assert_close(center, coords[:2, :, 2:10, 2:8])


def test_random_crop_in_train_center_crop_in_eval():
    torch.manual_seed(0)
    enc = ObsEncoder(SMALL, SHAPES, 2)
    obs = make_obs(SHAPES)
    enc.train()
    a = enc(obs, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, enc(obs, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(a, enc(obs, generator=torch.Generator().manual_seed(1)))
    enc.eval()
    e = enc(obs)
    torch.testing.assert_close(e, enc(obs, generator=torch.Generator().manual_seed(2)))
    cropped = {k: (v[..., 2:30, 2:30] if v.dim() == 5 else v) for k, v in obs.items()}
    full = ObsEncoder(SMALL.replace(crop_shape=None), {k: v.shape[2:] for k, v in cropped.items()}, 2).eval()
    full.load_state_dict(enc.state_dict())
    torch.testing.assert_close(e, full(cropped))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    enc = ObsEncoder(SMALL.replace(lowdim_mlp_dims=(8, 8)), SHAPES, 2)
    enc(make_obs(SHAPES)).square().mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_observations_name_the_key():
    enc = ObsEncoder(SMALL, SHAPES, 2)
    obs = make_obs(SHAPES)
    with pytest.raises(LfmPolicyError, match="missing .*'gripper'"):
        enc({k: v for k, v in obs.items() if k != "gripper"})
    with pytest.raises(LfmPolicyError, match="unknown .*'joint_vel'"):
        enc({**obs, "joint_vel": torch.zeros(2, 2, 7)})
    with pytest.raises(LfmPolicyError, match="'eef_pos' must have shape"):
        enc({**obs, "eef_pos": torch.zeros(2, 3, 3)})  # To = 3 instead of 2
    with pytest.raises(LfmPolicyError, match="'agentview_image' must be a float"):
        enc({**obs, "agentview_image": (obs["agentview_image"] * 255).to(torch.uint8)})
    with pytest.raises(LfmPolicyError, match="'gripper' has batch size 3"):
        enc({**obs, "gripper": torch.zeros(3, 2, 2)})


def test_bad_specs_raise():
    with pytest.raises(LfmPolicyError, match="'cam'.*larger|larger.*'cam'"):
        ObsEncoder(SMALL, {"cam": (3, 20, 20)}, 2)
    with pytest.raises(LfmPolicyError, match="'seg'"):
        ObsEncoder(SMALL, {"seg": (4, 4)}, 2)
    with pytest.raises(LfmPolicyError, match="share_rgb_model"):
        ObsEncoder(SMALL.replace(share_rgb_model=True), {"a": (3, 32, 32), "b": (1, 32, 32)}, 2)
    with pytest.raises(LfmPolicyError, match="no observation keys"):
        ObsEncoder(SMALL, {}, 2)


def test_config_round_trip_and_validation(tmp_path):
    other = SMALL.replace(crop_shape=None, lowdim_mlp_dims=(64,), share_rgb_model=True)
    for cfg in [ObsEncoderConfig(), other]:
        assert ObsEncoderConfig.from_dict(cfg.to_dict()) == cfg
        cfg.to_json(tmp_path / "enc.json")
        assert ObsEncoderConfig.from_json(tmp_path / "enc.json") == cfg
    overrides = ["backbone=small_cnn", "crop_shape=[60,64]", "share_rgb_model=true"]
    cfg = ObsEncoderConfig().with_overrides(overrides)
    assert cfg.backbone == "small_cnn" and cfg.crop_shape == (60, 64) and cfg.share_rgb_model
    for field, value in [("backbone", "vit"), ("crop_shape", (0, 3)), ("num_keypoints", 0),
                         ("small_cnn_channels", (24,)), ("lowdim_mlp_dims", (0,)), ("rgb_feature_dim", 0)]:
        with pytest.raises(ConfigError, match=field):
            ObsEncoderConfig(**{field: value})


def test_import_does_not_load_torchvision():
    code = ("import sys, lfm_policy, lfm_policy.nets, lfm_policy.nets.obs_encoder, lfm_policy.nets.unet1d, "
            "lfm_policy.nets.transformer; assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_feature_norm_standardizes_camera_features_and_keeps_the_ema_copy_batch_independent():
    from lfm_policy import Policy, PolicySpec
    from lfm_policy.normalizer import LinearNormalizer
    from lfm_policy.policy import PolicyConfig

    enc = ObsEncoder(SMALL, {"cam_image": (3, 32, 32)}, 1).train()
    feats = enc({"cam_image": torch.rand(32, 1, 3, 32, 32)})  # (32, 16): spread x / sqrt(x^2 + eps) per feature
    spread = feats.std(0, unbiased=False)
    assert (spread > 0.2).all() and (spread < 1.0 + 1e-4).all()
    off = ObsEncoder(ObsEncoderConfig(**{**SMALL.to_dict(), "feature_norm": False}), {"cam_image": (3, 32, 32)}, 1)
    assert off({"cam_image": torch.rand(32, 1, 3, 32, 32)}).std(0).mean() < 0.1  # a fresh net's spread
    spec = PolicySpec(obs_shapes={"cam_image": (32, 32, 3)}, image_keys=("cam_image",), action_dim=2)
    stats = {"action": {"min": -torch.ones(2).numpy(), "max": torch.ones(2).numpy()}}
    config = PolicyConfig(encoder=SMALL.replace(crop_shape=None))
    policy = Policy(config, spec, LinearNormalizer.from_stats(stats)).train()
    x = torch.randint(0, 256, (6, 2, 32, 32, 3), dtype=torch.uint8)
    alone = policy.encode({"cam_image": x[:1]}, ema=True)  # the EMA copy: running statistics, any batch
    torch.testing.assert_close(policy.encode({"cam_image": x}, ema=True)[:1], alone)
    assert policy.ema_encoder.training and policy.encoder.training
