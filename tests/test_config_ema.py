from dataclasses import dataclass, field

import pytest
import torch

from lfm_policy.config import Config, ConfigError, check
from lfm_policy.ema import EMAConfig, ema_update


@dataclass
class Inner(Config):
    k: int = 3

    def __post_init__(self):
        check(self.k > 0, "k", "must be > 0")


@dataclass
class Outer(Config):
    name: str = "a"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None


def test_config_round_trip_nested_and_tuples(tmp_path):
    cfg = Outer(name="b", sizes=(4, 5), inner=Inner(7), maybe=Inner(2))
    cfg.to_json(tmp_path / "x.json")
    back = Outer.from_json(tmp_path / "x.json")
    assert back == cfg and isinstance(back.sizes, tuple) and isinstance(back.maybe, Inner)
    assert not (tmp_path / "x.json.tmp").exists()


def test_config_errors_name_the_field_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.k"):
        Outer.from_dict({"inner": {"k": 0}})
    with pytest.raises(ConfigError, match="k: must be > 0"):
        Outer.from_dict({"inner": {"k": -1}})
    (tmp_path / "bad.json").write_text('{"nmae": "x"}')
    with pytest.raises(ConfigError, match=r"bad\.json.*nmae"):
        Outer.from_json(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        Outer.from_json(tmp_path / "broken.json")


def test_overrides():
    cfg = Outer().with_overrides(["inner.k=9", "name=hello", "sizes=[3,4]"])
    assert cfg.inner.k == 9 and cfg.name == "hello" and cfg.sizes == (3, 4)
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        Outer().with_overrides(["inner.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        Outer().with_overrides(["inner.k"])


def test_ema_decay_schedule_matches_diffusion_policy():
    cfg = EMAConfig(power=0.75, max_decay=0.9999)
    assert cfg.decay(1) == 0.0
    assert cfg.decay(11) == pytest.approx(1 - 11 ** -0.75)
    assert cfg.decay(10**9) == 0.9999
    assert EMAConfig(enabled=False).decay(1000) == 0.0
    with pytest.raises(ConfigError):
        EMAConfig(max_decay=1.0)


def test_ema_update_moves_towards_the_model():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * before + 0.1 * b.weight.detach())
    ema_update(a, b, 0.0)
    torch.testing.assert_close(a.weight, b.weight)
