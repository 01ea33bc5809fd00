"""The README's policy example runs as written (against a tiny checkpoint at the path it names)."""

import re
from pathlib import Path

from test_train import tiny_config

from lfm_policy.train import train

README = Path(__file__).resolve().parents[2] / "README.md"


def test_policy_example_runs(toy_zarr, tmp_path, monkeypatch):
    text = README.read_text()
    start = text.index("## Policies and training")
    code = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + 5)], flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(toy_zarr, "runs/toy_lowdim", total_steps=6).with_overrides(["policy.head.chain.n_blocks=2"])
    train(cfg, progress=False)
    scope: dict = {}
    exec(compile(code, "README:policy", "exec"), scope)
    assert scope["chunk"].shape == (1, 16, 2) and scope["actions"].shape == (1, 8, 2)
    assert scope["fast"].shape == (1, 16, 2)
