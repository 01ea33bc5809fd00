import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lfm_policy.errors import LfmPolicyError
from lfm_policy.normalizer import LinearNormalizer, NormalizerKeyError


def _stats(x: np.ndarray) -> dict:
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}


def test_minmax_maps_to_unit_box_and_roundtrips():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(200, 4))
    x[:, 2] = 7.5  # constant dimension
    norm = LinearNormalizer.from_stats({"action": _stats(x)})
    t = torch.as_tensor(x, dtype=torch.float32)
    y = norm.normalize_key("action", t)
    assert torch.allclose(y[:, [0, 1, 3]].min(0).values, torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(y[:, [0, 1, 3]].max(0).values, torch.tensor(1.0), atol=1e-6)
    assert torch.all(y[:, 2] == 0)  # a constant dim is centred, not blown up
    assert torch.allclose(norm.unnormalize_key("action", y), t, atol=1e-5)
    # broadcasting over leading (B, H) dims
    chunk = t[:32].reshape(2, 16, 4)
    assert torch.allclose(norm["action"].unnormalize(norm["action"].normalize(chunk)), chunk, atol=1e-5)


def test_meanstd_mode_and_key_modes():
    rng = np.random.default_rng(1)
    x = rng.normal(-2.0, 0.3, size=(500, 3))
    norm = LinearNormalizer.from_stats({"a": _stats(x), "b": _stats(x)}, mode="meanstd", key_modes={"b": "minmax"})
    ya = norm.normalize_key("a", torch.as_tensor(x))
    assert torch.allclose(ya.mean(0), torch.zeros(3, dtype=ya.dtype), atol=1e-5)
    assert torch.allclose(ya.std(0, unbiased=False), torch.ones(3, dtype=ya.dtype), atol=1e-5)
    yb = norm.normalize_key("b", torch.as_tensor(x))
    assert torch.isclose(yb.max(), torch.tensor(1.0, dtype=yb.dtype))
    with pytest.raises(LfmPolicyError, match="unknown mode"):
        LinearNormalizer.from_stats({"a": _stats(x)}, mode="robust")


def test_images_to_unit_range():
    norm = LinearNormalizer.from_stats({}, image_keys=["cam"])
    u8 = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.allclose(norm.normalize_key("cam", u8), torch.tensor([[0.0, 0.2, 1.0]]))
    f = torch.rand(2, 3, 8, 8)
    assert norm.normalize_key("cam", f) is f and norm.unnormalize_key("cam", f) is f


def test_unknown_keys_raise_instead_of_passing_through():
    norm = LinearNormalizer.from_stats({"action": _stats(np.arange(6.0).reshape(3, 2))})
    with pytest.raises(NormalizerKeyError, match="unknown key 'state'.*fitted keys: \\['action'\\]") as info:
        norm.normalize({"action": torch.zeros(2), "state": torch.zeros(2)})
    assert isinstance(info.value, KeyError) and isinstance(info.value, LfmPolicyError)
    with pytest.raises(NormalizerKeyError):
        norm.unnormalize({"state": torch.zeros(2)})
    with pytest.raises(LfmPolicyError, match="trailing shape"):
        norm.normalize_key("action", torch.zeros(3, 5))
    assert "action" in norm and "state" not in norm and norm.keys() == ["action"]


def test_bad_statistics():
    with pytest.raises(LfmPolicyError, match="NaN"):
        LinearNormalizer.from_stats({"a": {"min": np.array([np.nan]), "max": np.array([1.0])}})
    with pytest.raises(LfmPolicyError, match="lack 'max'"):
        LinearNormalizer.from_stats({"a": {"min": np.array([0.0])}})


def test_state_dict_roundtrip_into_empty_normalizer(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-4, 9, size=(50, 3))
    norm = LinearNormalizer.from_stats({"action": _stats(x), "robot.eef_pos": _stats(x[:, :2])}, image_keys=["rgb"])

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.normalizer = LinearNormalizer()
            self.head = nn.Linear(2, 2)

    src = Policy()
    src.normalizer = norm
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    dst = Policy()  # normalizer starts empty and is rebuilt from the weights
    dst.load_state_dict(load_file(str(path)))
    assert dst.normalizer.keys() == ["action", "rgb", "robot.eef_pos"]
    t = torch.as_tensor(x, dtype=torch.float32)
    assert torch.equal(dst.normalizer.normalize_key("action", t), norm.normalize_key("action", t))
    assert torch.equal(dst.normalizer.normalize_key("robot.eef_pos", t[:, :2]),
                       norm.normalize_key("robot.eef_pos", t[:, :2]))
    u8 = torch.full((1, 3), 255, dtype=torch.uint8)
    assert torch.equal(dst.normalizer.normalize_key("rgb", u8), torch.ones(1, 3))
    with pytest.raises(RuntimeError, match="Missing key"):
        Policy().normalizer.__class__.from_stats({"other": _stats(x)}).load_state_dict(norm.state_dict())
