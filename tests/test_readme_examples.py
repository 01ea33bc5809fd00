"""The README's copy-paste examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_flow_core_example_runs(capsys):
    (code,) = python_blocks("## The flow core")
    scope: dict = {}
    exec(compile(code, "README:flow-core", "exec"), scope)
    x = scope["x"]
    assert x.shape == (5, 2)
    assert (x - x.new_tensor([0.0, 1.0])).norm(dim=1).median() < 0.3
    assert "8" in capsys.readouterr().out


def test_datasets_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = python_blocks("## Demonstration datasets")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README:datasets", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[:2] == ["387", "43"]
    assert (tmp_path / "demo.zarr").is_dir()


def test_networks_example_runs():
    (code,) = python_blocks("## Networks")
    scope: dict = {}
    exec(compile(code, "README:nets", "exec"), scope)
    assert scope["cond"].shape == (8, 134) and scope["v"].shape == (8, 16, 7)
