"""The policy example of docs/training.md runs as written (against a tiny checkpoint at the path it names)."""

from markdown_blocks import DOCS, fenced_blocks
from test_train import tiny_config

from lfm_policy.train import train


def test_policy_example_runs(toy_zarr, tmp_path, monkeypatch):
    code = fenced_blocks(DOCS / "training.md", "## Train and use a policy")[0]
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(toy_zarr, "runs/toy_lowdim", total_steps=6).with_overrides(["policy.head.chain.n_blocks=2"])
    train(cfg, progress=False)
    scope: dict = {}
    exec(compile(code, "docs/training.md:policy", "exec"), scope)
    assert scope["chunk"].shape == (1, 16, 2) and scope["actions"].shape == (1, 8, 2)
    assert scope["fast"].shape == (1, 16, 2)
