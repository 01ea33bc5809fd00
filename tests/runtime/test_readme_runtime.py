"""The runtime examples run as written (against a tiny checkpoint at the path they name).

The README's deploy example and the control-loop example of docs/runtime.md.
"""

import pytest
from markdown_blocks import DOCS, README, fenced_blocks
from test_loop import toy_policy


@pytest.mark.parametrize(
    "page, heading", [(README, "## Examples"), (DOCS / "runtime.md", "## Control loop")], ids=["readme", "runtime.md"]
)
def test_runtime_example_runs(tmp_path, monkeypatch, page, heading):
    code = fenced_blocks(page, heading)[0]
    monkeypatch.chdir(tmp_path)
    toy_policy().save(tmp_path / "runs/toy_lowdim/checkpoints/latest")
    scope: dict = {}
    exec(compile(code, f"{page.name}:runtime", "exec"), scope)
    report = scope["report"]
    assert report.stop_reason == "done" and report.steps > 0 and report.jitter_ms["p95"] is not None
