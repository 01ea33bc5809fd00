"""The benchmark suite end to end at a tiny budget: every method's row, the results page, plots, resume."""

import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import suite  # noqa: E402
import suite_latency  # noqa: E402
import suite_plan  # noqa: E402
import suite_report  # noqa: E402

from lfm_policy.train_run import RUN_CONFIG  # noqa: E402


@pytest.fixture
def tiny(monkeypatch):
    budget = suite_plan.Budget(demos={"toy": 12, "metaworld": 4, "robosuite": 2}, eval_episodes=2,
                               steps={"toy": 40}, distill_steps=8, latency_reps=2,
                               overrides=("val_every=1000", "checkpoint_every=1000"))  # fmt: skip
    monkeypatch.setitem(suite_plan.SUITES, "tiny", ([suite_plan.Cell("toy/point-obstacle", headline=True)], budget))
    return budget


def test_suite_runs_every_method_writes_the_page_and_resumes(tmp_path, tiny, capsys, monkeypatch):
    out, page, row_dir, readme = tmp_path / "work", tmp_path / "results.md", tmp_path / "rows", tmp_path / "README.md"
    readme.write_text("# x\n<!-- suite-headline:tiny:start -->\nold\n<!-- suite-headline:tiny:end -->\nend\n")
    argv = ["--suite", "tiny", "--out", str(out), "--results", str(page), "--rows", str(row_dir),
            "--readme", str(readme)]
    suite.main([*argv, "--max-minutes", "0"])  # a part whose time is up stops before the first training
    assert "--max-minutes 0 reached" in capsys.readouterr().out and not (out / "toy_point-obstacle").exists()
    suite.main(argv)
    rows = sorted((row_dir / "toy_point-obstacle" / "seed0").glob("*.json"))
    labels = [json.loads(f.read_text())["row"] for f in rows]
    assert labels == [m.label for m in suite_plan.methods(4)]
    first = json.loads(rows[0].read_text())
    assert first["episodes"] == 2 and first["demo_modes"] and 0 <= first["success"] <= 1
    assert set(first["demo_modes"]) == {"left", "right"} and first["mode_coverage"] is not None
    assert first["latency_ms"] > 0 and first["train_s"] > 0 and first["params"] > 0
    equal_nfe = json.loads(rows[1].read_text())
    assert not equal_nfe["distilled"] and equal_nfe["nfe"] == 8  # 4 blocks × euler×2: at most FM euler×10's
    distilled = json.loads(rows[2].read_text())
    assert distilled["distilled"] and distilled["nfe"] == 4 and distilled["distill_s"] > 0
    text = page.read_text()
    assert "**Status: 1 of 1 (task, training seed) cells complete** (18 rows)" in text
    more_steps = json.loads(rows[11].read_text())
    assert more_steps["head"] == "lfm_steps" and more_steps["train_s"] > 0 and more_steps["nfe"] == 8
    free = json.loads((out / "toy_point-obstacle" / "seed0" / "lfm_free" / RUN_CONFIG).read_text())
    assert free["total_steps"] == 40 and free["policy"]["head"]["block_steps"] == [1 / 6, 1 / 6, 1 / 6, 1 / 2]
    assert json.loads(rows[13].read_text())["head"] == "lfm_free"
    wide = json.loads((out / "toy_point-obstacle" / "seed0" / "lfm_free_params" / RUN_CONFIG).read_text())
    assert wide["policy"]["head"]["block_params"] == wide["policy"]["head"]["block_steps"] == [1 / 6] * 3 + [1 / 2]
    wide_student = json.loads(rows[-1].read_text())
    assert wide_student["head"] == "lfm_free_params" and wide_student["distilled"] and wide_student["nfe"] == 4
    assert json.loads(rows[15].read_text())["params"] != first["params"]  # the blocks' widths moved
    # Every row records what it was made from; a student records its teacher's.
    lfm_sha = suite.row_sha(suite_plan.SUITES["tiny"][0][0], tiny, "lfm", 0, [], False)
    assert first["config_sha"] == lfm_sha and distilled["config_sha"] not in (None, lfm_sha)
    student = json.loads((out / "toy_point-obstacle" / "seed0" / "lfm_distilled" / "suite_timing.json").read_text())
    assert student["teacher_sha"] == lfm_sha
    saved = json.loads((out / "toy_point-obstacle" / "seed0" / "lfm_steps" / RUN_CONFIG).read_text())
    assert saved["total_steps"] == 4 * 40 and saved["policy"]["head"]["kind"] == "lfm"  # 4 blocks × 40 steps
    assert "| LFM euler×10/N per block (NFE ≤ 10) |" in text
    assert "| regression |" in text and "python benchmarks/suite.py --suite tiny" in text
    assert (tmp_path / "img" / "results_tiny_success_vs_cost.png").stat().st_size > 1000
    assert (tmp_path / "img" / "results_tiny_modes.png").is_file()
    # The README's headline block is rewritten between its markers, the rest of the file kept.
    head = readme.read_text()
    assert head.startswith("# x\n<!-- suite-headline:tiny:start -->\nMean over 1 multimodal tasks")
    assert head.endswith("end\n")
    assert "old" not in head and "| regression | 1 |" in head and "| LFM ×N steps (midpoint×1 per block) | 8 |" in head

    # A rerun finds every training and row: nothing is trained or evaluated again.
    stamps = {f: f.stat().st_mtime_ns for f in rows}
    status = (out / "toy_point-obstacle" / "seed0" / "lfm" / "status.json").stat().st_mtime_ns
    suite.main(argv)
    assert {f: f.stat().st_mtime_ns for f in rows} == stamps
    assert (out / "toy_point-obstacle" / "seed0" / "lfm" / "status.json").stat().st_mtime_ns == status
    # A lost row is evaluated again, the others are kept; --report alone rebuilds the page from the rows.
    rows[-1].unlink()
    suite.main(argv)
    assert rows[-1].is_file() and rows[0].stat().st_mtime_ns == stamps[rows[0]]
    # The work directory lost (a fresh machine): a finished cell is not recomputed, not even its demos; a lost
    # row then trains only the head it needs.
    shutil.rmtree(out)
    suite.main(argv)
    assert not out.exists() or not any(out.rglob("*.zarr"))
    rows[10].unlink()  # regression
    suite.main(argv)
    assert rows[10].is_file() and json.loads(rows[10].read_text())["head"] == "regression"
    assert [p.name for p in (out / "toy_point-obstacle" / "seed0").iterdir()] == ["regression"]
    # The shipped config changed since (here: regression's learning rate): its row is measured again from a
    # new training, the other rows are kept.
    before, reg_status = json.loads(rows[10].read_text()), out / "toy_point-obstacle" / "seed0" / "regression"
    reg_stamp = (reg_status / "status.json").stat().st_mtime_ns
    shipped = suite.train_overrides
    monkeypatch.setattr(suite, "train_overrides", lambda cell, budget, kind, seed, extra: shipped(
        cell, budget, kind, seed, [*extra, *(["optim.lr=0.002"] if kind == "regression" else [])]))
    suite.main(argv)
    after = json.loads(rows[10].read_text())
    assert after["config_sha"] != before["config_sha"] and (reg_status / "status.json").stat().st_mtime_ns != reg_stamp
    assert json.loads((reg_status / RUN_CONFIG).read_text())["optim"]["lr"] == 0.002
    assert rows[0].stat().st_mtime_ns == stamps[rows[0]]
    monkeypatch.setattr(suite, "train_overrides", shipped)
    page.unlink()
    suite.main([*argv, "--report"])
    assert page.read_text().count("| regression |") >= 2
    assert "timed during the run" in page.read_text().lower()

    # The quiet latency pass times every row again (interleaved) and the page then uses those times.
    suite_latency.main(["--suite", "tiny", "--rows", str(row_dir), "--out", str(tmp_path / "lat"), "--results",
                        str(page), "--readme", str(readme), "--reps", "2", "--rounds", "1"])
    quiet = json.loads((row_dir / "latency" / "toy_point-obstacle.json").read_text())
    assert list(quiet["ms"]) == labels and all(ms > 0 for ms in quiet["ms"].values())
    assert "For 1 of the 1 tasks the times come from" in page.read_text()
    reloaded = {r["row"]: r for r in suite_report.load_rows(row_dir)}
    assert reloaded["DDPM-100"]["latency_quiet"] and reloaded["DDPM-100"]["latency_ms"] == quiet["ms"]["DDPM-100"]


def test_suite_plans_name_shipped_configs_and_registered_tasks():
    from lfm_policy.envs.registry import list_tasks

    for name, (cells, budget) in suite_plan.SUITES.items():
        for cell in cells:
            assert cell.task in list_tasks(), (name, cell.task)
            assert (BENCH.parent / "configs" / suite_plan.config_name(cell)).is_file()
            assert cell.family in budget.demos
            for kind in suite.HEADS:  # every training of every suite is a valid config (validated on construction)
                cfg = suite.train_config(cell, budget, Path("d.zarr"), Path("run"), kind, 0, [])
                assert cfg.policy.head.kind == ("lfm" if kind in suite.LFM_VARIANTS else kind)
    cpu_cells, _ = suite_plan.SUITES["cpu"]
    multimodal = {c.task for c in cpu_cells if c.multimodal}
    assert len([t for t in multimodal if not t.startswith("toy/")]) >= 4
    assert len({c.task for c in cpu_cells if c.family == "metaworld"}) >= 10
    headline_seeds = {}
    for c in cpu_cells:
        if c.headline:
            headline_seeds.setdefault(c.task, set()).update(c.seeds)
    assert all(len(s) >= 3 for s in headline_seeds.values())


def test_headline_pools_only_the_seeds_every_row_finished():
    def row(label, seed, k, nfe=2):
        return {"task": "toy/point-obstacle", "images": False, "seed": seed, "row": label, "successes": k,
                "episodes": 10, "success": k / 10, "success_modes": {"left": k}, "demo_modes": {"left": 5, "right": 5},
                "latency_ms": 1.0, "nfe": nfe, "params": 1, "train_s": 1.0, "distill_s": None, "collisions": 10 - k}

    labels = ["DDIM-10", "regression"]
    rows = [row("DDIM-10", 0, 8), row("regression", 0, 4), row("DDIM-10", 1, 0)]  # seed 1 is part-way
    cells = [suite_plan.Cell("toy/point-obstacle", (0, 1), headline=True)]
    lines = suite_report.headline(rows, cells, labels, "tiny", 10)
    assert lines[0].startswith("Mean over 1 multimodal tasks (training seeds: point-obstacle 0)")
    assert "| DDIM-10 | 2 | 0.80 | 0.80 – 0.80 | 0.20 | 1.00 |" in lines
    assert "| regression | 2 | 0.40 | 0.40 – 0.40 | 0.60 | 1.00 |" in lines
    none_yet = ["(no headline cell of the suite has finished yet)"]
    assert suite_report.headline(rows[2:], cells, labels, "tiny", 10) == none_yet
