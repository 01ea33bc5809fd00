"""The README's runtime example runs as written (against a tiny checkpoint at the path it names)."""

import re
from pathlib import Path

from test_loop import toy_policy

README = Path(__file__).resolve().parents[2] / "README.md"


def test_runtime_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    start = text.index("## Running on a robot")
    code = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + 5)], flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    toy_policy().save(tmp_path / "runs/toy_lowdim/checkpoints/latest")
    scope: dict = {}
    exec(compile(code, "README:runtime", "exec"), scope)
    report = scope["report"]
    assert report.stop_reason == "done" and report.steps > 0 and report.jitter_ms["p95"] is not None
