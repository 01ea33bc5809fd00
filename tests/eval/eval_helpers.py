"""Helpers shared by the eval tests."""

import json
from pathlib import Path

from lfm_policy.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def tiny_train_config(data, out, **kw) -> TrainConfig:
    """A 2-block LFM policy with a 32-wide MLP, trained for a handful of steps (seconds on a CPU)."""
    cfg = TrainConfig.from_json(ROOT / "configs" / "toy_lowdim.json")
    return cfg.with_overrides([
        f"data.path={data}", f"out_dir={out}", "policy.head.kind=lfm", "policy.head.chain.n_blocks=2",
        "policy.head.net.family=mlp", "policy.head.net.mlp.width=32", "policy.head.net.mlp.depth=1",
        "policy.head.net.mlp.time_dim=16", "total_steps=20", "batch_size=16", "log_every=5", "val_every=1000",
        "checkpoint_every=1000", "data.val_ratio=0", *[f"{k}={json.dumps(v)}" for k, v in kw.items()]])
