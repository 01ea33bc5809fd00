"""The copy-paste examples of the docs pages (moved there from the README) run as written."""

from markdown_blocks import DOCS, fenced_blocks


def test_flow_core_example_runs(capsys):
    (code,) = fenced_blocks(DOCS / "flow.md", "## The flow core")
    scope: dict = {}
    exec(compile(code, "docs/flow.md:flow-core", "exec"), scope)
    x = scope["x"]
    assert x.shape == (5, 2)
    assert (x - x.new_tensor([0.0, 1.0])).norm(dim=1).median() < 0.3
    assert "8" in capsys.readouterr().out


def test_datasets_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = fenced_blocks(DOCS / "datasets.md", "## Replay buffer")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/datasets.md:replay-buffer", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[:2] == ["387", "43"]
    assert (tmp_path / "demo.zarr").is_dir()


def test_networks_example_runs():
    (code,) = fenced_blocks(DOCS / "networks.md", "## Observation encoder")
    scope: dict = {}
    exec(compile(code, "docs/networks.md:obs-encoder", "exec"), scope)
    assert scope["cond"].shape == (8, 134) and scope["v"].shape == (8, 16, 7)
