"""The suite's results page (Markdown) and plots, rebuilt from every finished row under OUT.

Success pools every training seed's episodes (the same episode seeds for every row) with a Wilson 95 %
interval; with several training seeds the per-seed range is shown too. Latency is the median over
tasks of each row's batch-1 chunk time, and its ratio to DDIM-10 the median of per-task ratios
(measured in the same process, one torch thread).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from suite_plan import Budget, Cell, canonical, config_name

from lfm_policy.config import atomic_write_text
from lfm_policy.eval.metrics import mode_coverage, wilson_interval


def load_rows(rows_dir: Path) -> list[dict[str, Any]]:
    """Every finished row under ``rows_dir`` (``<cell>/seed<k>/NN.json``), labels made canonical.

    Where ``rows_dir/latency/<cell>.json`` (``suite_latency.py``: every row of the cell timed interleaved in
    one quiet process) has the row, its time replaces the one measured during the run (kept as
    ``latency_in_run_ms``; ``latency_quiet`` says which).
    """
    quiet = {}  # (task, images) -> {row label: ms} from suite_latency.py
    for f in sorted(rows_dir.glob("latency/*.json")):
        q = json.loads(f.read_text())
        quiet[(q["task"], q["images"])] = q["ms"]
    rows = []
    for f in sorted(rows_dir.glob("*/seed*/*.json")):
        r = json.loads(f.read_text())
        ms = quiet.get((r["task"], r["images"]), {}).get(r["row"])
        r["latency_in_run_ms"], r["latency_quiet"] = r["latency_ms"], ms is not None
        r["latency_ms"] = r["latency_ms"] if ms is None else ms
        r["row"] = canonical(r["row"])
        rows.append(r)
    return rows


def _cell_key(task: str, images: bool) -> str:
    return task.replace("/", "_") + ("_image" if images else "")


def pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Success and modes of one (task, method) over its training seeds."""
    k, n = sum(r["successes"] for r in rows), sum(r["episodes"] for r in rows)
    modes: dict[str, int] = {}
    for r in rows:
        for m, c in r["success_modes"].items():
            modes[m] = modes.get(m, 0) + c
    lo, hi = wilson_interval(k, n)
    seeds = sorted(r["seed"] for r in rows)
    per_seed = [r["success"] for r in sorted(rows, key=lambda r: r["seed"])]
    return {"k": k, "n": n, "success": k / n if n else float("nan"), "ci": (lo, hi), "seeds": seeds,
            "per_seed": per_seed, "modes": modes, "demo_modes": list(rows[0]["demo_modes"]),
            **mode_coverage(modes, list(rows[0]["demo_modes"])),
            "latency_ms": statistics.median(r["latency_ms"] for r in rows), "nfe": rows[0]["nfe"],
            "params": rows[0]["params"], "train_s": _mean([r["train_s"] for r in rows]),
            "distill_s": _mean([r["distill_s"] for r in rows]),
            "collisions": sum(r.get("collisions", 0) for r in rows)}  # fmt: skip


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def _short(task: str) -> str:
    return task.split("/", 1)[1].removesuffix("-v3").replace("-v3-", "-")


def _succ(p: dict[str, Any] | None, seeds: bool = True) -> str:
    if p is None:
        return "–"
    text = f"{p['success']:.2f}"
    if seeds and len(p["seeds"]) > 1:
        text += f" ({min(p['per_seed']):.2f}–{max(p['per_seed']):.2f})"
    return text


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, bool], dict[str, dict[str, Any]]]:
    """``{(task, images): {row label: pooled}}``."""
    groups: dict[tuple[str, bool, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["images"], r["row"]), []).append(r)
    table: dict[tuple[str, bool], dict[str, dict[str, Any]]] = {}
    for (task, images, label), rs in groups.items():
        table.setdefault((task, images), {})[label] = pooled(rs)
    return table


def _success_table(cells: list[Cell], table: dict, labels: list[str], with_coverage: bool) -> list[str]:
    cols = [c for c in cells if (c.task, c.images) in table]
    if not cols:
        return ["(no cell of this kind has finished yet)"]
    head = "| method | " + " | ".join(_short(c.task) + (" (img)" if c.images else "") for c in cols) + " | mean |"
    lines = [head, "|---|" + "---|" * (len(cols) + 1)]
    for label in labels:
        ps = [table[(c.task, c.images)].get(label) for c in cols]
        vals = [p["success"] for p in ps if p is not None]
        cells_txt = []
        for p in ps:
            txt = _succ(p)
            if with_coverage and p is not None and p["mode_coverage"] is not None:
                txt += f" · {p['mode_coverage']:.1f}"
            cells_txt.append(txt)
        mean = f"{statistics.mean(vals):.3f}" if len(vals) == len(cols) else "–"
        lines.append(f"| {label} | " + " | ".join(cells_txt) + f" | {mean} |")
    return lines


def _cost_table(table: dict, labels: list[str]) -> list[str]:
    lines = ["| method | NFE | ms / chunk (median) | ÷ DDIM-10 | train s (mean) | distill s | params |",
             "|---|---|---|---|---|---|---|"]
    for label in labels:
        ps = {key: t[label] for key, t in table.items() if label in t}
        if not ps:
            continue
        ratios = [p["latency_ms"] / table[key]["DDIM-10"]["latency_ms"] for key, p in ps.items()
                  if "DDIM-10" in table[key]]
        nfes = sorted({str(p["nfe"]) for p in ps.values()}, key=int)
        params = sorted({p["params"] for p in ps.values()})
        train = _mean([p["train_s"] for p in ps.values()])
        distill = _mean([p["distill_s"] for p in ps.values()])
        lines.append(f"| {label} | {'/'.join(nfes)} | {statistics.median(p['latency_ms'] for p in ps.values()):.2f} | "
                     f"{statistics.median(ratios):.2f} | {'–' if train is None else f'{train:.0f}'} | "
                     f"{'–' if distill is None else f'{distill:.0f}'} | "
                     f"{params[0]:,}{'–' + format(params[-1], ',') if len(params) > 1 else ''} |")  # fmt: skip
    return lines


def _detail(cell: Cell, t: dict[str, dict[str, Any]], labels: list[str]) -> list[str]:
    lines = [f"#### {cell.task}{' (images)' if cell.images else ''}", "",
             "| method | seeds | successes | success | Wilson 95 % | success per mode | coverage | entropy | "
             "collisions | NFE | ms / chunk |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label in labels:
        p = t.get(label)
        if p is None:
            continue
        modes = ", ".join(f"{m} {c}" for m, c in sorted(p["modes"].items())) or "–"
        cov = "–" if p["mode_coverage"] is None else f"{p['mode_coverage']:.2f}"
        ent = "–" if p["mode_entropy"] is None else f"{p['mode_entropy']:.2f}"
        lines.append(f"| {label} | {','.join(map(str, p['seeds']))} | {p['k']}/{p['n']} | {_succ(p)} | "
                     f"{p['ci'][0]:.2f}–{p['ci'][1]:.2f} | {modes} | {cov} | {ent} | {p['collisions']} | {p['nfe']} | "
                     f"{p['latency_ms']:.2f} |")  # fmt: skip
    return lines + [""]


def plots(table: dict, cells: list[Cell], labels: list[str], img_dir: Path, stem: str) -> list[Path]:
    """Success vs NFE, success vs latency (means over multimodal cells) and success per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = [c for c in cells if c.multimodal and (c.task, c.images) in table]
    if not multi:
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label in labels:
        ps = [table[(c.task, c.images)].get(label) for c in multi]
        if any(p is None for p in ps):
            continue
        succ = statistics.mean(p["success"] for p in ps)
        axes[0].plot([statistics.median(p["nfe"] for p in ps)], [succ], "o", label=label)
        axes[1].plot([statistics.median(p["latency_ms"] for p in ps)], [succ], "o", label=label)
    for ax, xlabel in zip(axes, ("NFE per action chunk", "ms per chunk, batch 1 (median over tasks)")):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"success (mean over {len(multi)} multimodal tasks)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(_save(fig, img_dir / f"{stem}_success_vs_cost.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(multi), figsize=(3.2 * len(multi), 3.6), squeeze=False)
    for ax, c in zip(axes[0], multi):
        t = table[(c.task, c.images)]
        shown = [lb for lb in labels if lb in t]
        modes = sorted({m for lb in shown for m in [*t[lb]["modes"], *t[lb]["demo_modes"]]})
        bottom = [0.0] * len(shown)
        for m in modes:
            vals = [t[lb]["modes"].get(m, 0) / t[lb]["n"] for lb in shown]
            ax.bar(range(len(shown)), vals, bottom=bottom, label=m)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(shown)), [lb.split(" (")[0] for lb in shown], rotation=90, fontsize=6)
        ax.set_ylim(0, 1.05)
        ax.set_title(_short(c.task), fontsize=8)
        if modes:
            ax.legend(fontsize=6)
    axes[0][0].set_ylabel("success, split by mode")
    fig.tight_layout()
    paths.append(_save(fig, img_dir / f"{stem}_modes.png"))
    plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
    return path


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, 1 torch thread")


#: The README's headline rows (the rest are on the results page).
HEADLINE_ROWS = ("LFM ODE (midpoint×1 per block)", "LFM euler×10/N per block (NFE ≤ 10)",
                 "LFM ×N steps (midpoint×1 per block)", "LFM free×3 steps (midpoint×1 per block)",
                 "LFM free×3 steps, euler×10/N per block (NFE ≤ 10)",
                 "LFM free×3 steps+params (midpoint×1 per block)",
                 "LFM free×3 steps+params, euler×10/N per block (NFE ≤ 10)", "LFM distilled",
                 "LFM free×3 steps+params distilled",
                 "FM euler×N (LFM's NFE)", "FM euler×10", "FM distilled", "DDIM-4", "DDIM-10", "DDPM-100",
                 "regression")  # fmt: skip


def headline(rows: list[dict[str, Any]], cells: list[Cell], labels: list[str], suite: str, episodes: int) -> list[str]:
    """The README's table: every headline row, mean success over the multimodal headline cells.

    A cell counts with the training seeds for which every row has finished (pooled over those seeds), so
    a partly run seed never mixes into the means.
    """
    done, table = [], {}
    need = set(HEADLINE_ROWS) & set(labels)  # rows added to the plan later do not take cells out
    for c in cells:
        if not (c.headline and c.multimodal):
            continue
        mine = [r for r in rows if (r["task"], r["images"]) == (c.task, c.images)]
        full = sorted(s for s in {r["seed"] for r in mine} if {r["row"] for r in mine if r["seed"] == s} >= need)
        if full:
            done.append(Cell(c.task, tuple(full), c.images, True))
            table.update(aggregate([r for r in mine if r["seed"] in full]))
    if not done:
        return ["(no headline cell of the suite has finished yet)"]
    seeds = "; ".join(f"{_short(c.task)} {','.join(map(str, c.seeds))}" for c in done)
    lines = [f"Mean over {len(done)} multimodal tasks (training seeds: {seeds}); success pools each task's "
             f"training seeds, {episodes} episodes per seed on the same episode seeds for every row.", "",
             "| method | NFE | success (mean) | lowest – highest task | collisions per episode | "
             "ms per chunk ÷ DDIM-10 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label in HEADLINE_ROWS:
        ps = [table[(c.task, c.images)][label] for c in done if label in table[(c.task, c.images)]]
        if len(ps) < len(done):
            continue
        succ = [p["success"] for p in ps]
        ratio = statistics.median(p["latency_ms"] / table[(c.task, c.images)]["DDIM-10"]["latency_ms"]
                                  for c, p in zip(done, ps))
        nfes = "/".join(sorted({str(p["nfe"]) for p in ps}, key=int))
        coll = sum(p["collisions"] for p in ps) / sum(p["n"] for p in ps)
        lines.append(f"| {label} | {nfes} | {statistics.mean(succ):.2f} | {min(succ):.2f} – {max(succ):.2f} | "
                     f"{coll:.2f} | {ratio:.2f} |")
    return lines + ["", f"Measured by `python benchmarks/suite.py --suite {suite}` on {machine()}."]


def write_readme_headline(readme: Path, suite: str, lines: list[str]) -> bool:
    """Replace the block between ``<!-- suite-headline:SUITE:start/end -->`` in ``readme``; False without them."""
    start, end = f"<!-- suite-headline:{suite}:start -->", f"<!-- suite-headline:{suite}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(readme, head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
    return True


def write_report(rows_dir: Path, suite: str, cells: list[Cell], budget: Budget, results: Path,
                 readme: Path | None = None) -> Path:
    """Rewrite ``results`` (and its plots under ``<results dir>/img``) from the rows under ``rows_dir``.

    With ``readme``, its headline table for this suite (between its suite-headline markers) is rewritten too.
    """
    rows = load_rows(rows_dir)
    table = aggregate(rows)
    seen: dict[tuple[str, bool], Cell] = {}
    for c in cells:  # a cell listed twice (more seeds) is one column
        prev = seen.get((c.task, c.images))
        seeds = tuple(sorted(set(c.seeds) | set(prev.seeds if prev else ())))
        seen[(c.task, c.images)] = Cell(c.task, seeds, c.images, c.headline or bool(prev and prev.headline))
    uniq = list(seen.values())
    labels = list(dict.fromkeys(r["row"] for r in rows))
    expected = sum(len(c.seeds) for c in uniq)
    finished = {(r["task"], r["images"], r["seed"]) for r in rows}
    n_labels = len(labels) or 10
    complete = sum(1 for c in uniq for s in c.seeds
                   if sum(1 for r in rows if (r["task"], r["images"], r["seed"]) == (c.task, c.images, s)) >= n_labels)
    img_dir = results.parent / "img"
    pngs = plots(table, uniq, labels, img_dir, f"results_{suite}") if rows else []
    last = max((dt.datetime.fromtimestamp(f.stat().st_mtime, dt.timezone.utc)
                for f in rows_dir.glob("*/seed*/*.json")), default=None)  # fmt: skip
    multi = [c for c in uniq if c.multimodal]
    uni = [c for c in uniq if not c.multimodal]
    pending = [f"{c.task} seed {s}" for c in uniq for s in c.seeds if (c.task, c.images, s) not in finished]
    lines = [
        f"# Benchmark suite results ({suite})",
        "",
        "Every method trains from the same shipped config (only `policy.head.kind` and the training seed change: "
        "same trunk, batch, optimizer steps), on the same scripted demonstrations, and is evaluated on the same "
        f"episode seeds (100000…, {budget.eval_episodes} per row and training seed). Distilled rows are one-step "
        "students of the LFM / FM teachers (`lfm-policy distill` defaults, "
        f"{budget.distill_steps} steps per student). Multimodal tasks: the toy task and the `-detour` variants "
        "(docs/demonstrations.md): the expert goes around an obstacle on a random side, so averaging the "
        "demonstrations collides.",
        "",
        f"Reproduce: `python benchmarks/suite.py --suite {suite}` (resumable; `--tasks T ...` runs some cells, "
        f"`--report` rewrites this page). Machine: {machine()}. Last row finished: "
        f"{last.strftime('%Y-%m-%d %H:%M UTC') if last else 'none yet'}.",
        "",
        f"**Status: {complete} of {expected} (task, training seed) cells complete** ({len(rows)} rows).",
    ]
    if pending:
        lines += ["", "Not run yet: " + ", ".join(pending) + "."]
    notes = Path(__file__).with_name(f"suite_notes_{suite}.md")
    if notes.is_file():  # the hand-written reading of the numbers, kept across rewrites
        lines += ["", notes.read_text().strip()]
    lines += ["", "## Multimodal tasks: success (per-seed range) · mode coverage", "",
              "Mode coverage: fraction of the demonstrations' modes with at least one successful episode.", ""]
    lines += _success_table(multi, table, labels, with_coverage=True)
    lines += ["", "## Unimodal tasks: success", ""]
    lines += _success_table(uni, table, labels, with_coverage=False)
    n_quiet = len({(r["task"], r["images"]) for r in rows if r["latency_quiet"]})
    n_cells = len({(r["task"], r["images"]) for r in rows})
    timing = (f"For {n_quiet} of the {n_cells} tasks the times come from `python benchmarks/suite_latency.py "
              f"--suite {suite}`: every row of a task timed in turn in one quiet process, the median of 3 rounds of "
              "100 calls (the networks are the suite's, with untrained weights: the samplers have fixed steps, so "
              "time does not depend on them); the rest were timed during the run, with trainings sharing the CPU, "
              f"p50 over {budget.latency_reps} calls. " if n_quiet else
              f"Timed during the run (trainings share the CPU), p50 over {budget.latency_reps} calls after "
              f"warm-up; `python benchmarks/suite_latency.py --suite {suite}` times them again in one quiet process. ")
    lines += ["", "## Cost", "", "Latency: one action chunk at batch 1, one torch thread. " + timing +
              "Median over finished tasks; ratio: median of per-task ratios to DDIM-10 in the same process. "
              "Train s: wall time of one training run (mean over tasks and seeds); the distilled rows' distill s "
              "is on top of their teacher's.", ""]
    lines += _cost_table(table, labels)
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](img/{p.name})" for p in pngs]
    lines += ["", "## Per task", "",
              "Configs: " + ", ".join(sorted({f"`configs/{config_name(c)}`" for c in uniq})) + "; demonstrations "
              "per family: " + ", ".join(f"{k} {v}" for k, v in budget.demos.items()) + ".", ""]
    for c in uniq:
        if (c.task, c.images) in table:
            lines += _detail(c, table[(c.task, c.images)], labels)
    atomic_write_text(results, "\n".join(lines) + "\n")
    if readme is not None:
        write_readme_headline(readme, suite, headline(rows, uniq, labels, suite, budget.eval_episodes))
    return results
