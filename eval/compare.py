"""``lfm-policy compare``: check that runs are comparable, then tabulate, pair and plot them.

Runs are compared against the first one. They must have been evaluated in the same environment
(same :func:`~lfm_policy.eval.environment.fingerprint`; a results file of schema 1, whose environment
is unknown, is compared by task only) and from the same first seed, unless allowed explicitly.

The paired statistic matches episodes by seed value (episodes that crashed are left out): counts of
both succeed / both fail / only the first run / only the other, and McNemar's exact test — a
two-sided exact binomial test (p = 1/2) on the discordant pairs, ``scipy.stats.binomtest``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lfm_policy.errors import LfmPolicyError
from lfm_policy.eval.environment import UNKNOWN, environment_diff


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def check_comparable(records: Sequence[dict[str, Any]], names: Sequence[str], *, allow_env_mismatch: bool = False,
                     allow_seed_mismatch: bool = False) -> list[str]:
    """Raise unless every run is comparable with the first; return notes about what could not be checked.

    Raises:
        LfmPolicyError: A run's environment (or, for schema-1 files, task) or first seed differs from the
            first run's; the one-line message lists the differing fields.

    """
    notes = []
    first, first_env = records[0], records[0].get("environment", UNKNOWN)
    for name, rec in zip(names[1:], records[1:]):
        env = rec.get("environment", UNKNOWN)
        if isinstance(env, dict) and isinstance(first_env, dict):
            diff = []
            if env["fingerprint"] != first_env["fingerprint"]:
                diff = environment_diff(first_env, env) or [("fingerprint", first_env["fingerprint"],
                                                             env["fingerprint"])]
        else:
            diff = [("task", first["task"], rec["task"])] if rec["task"] != first["task"] else []
            unknown = [n for n, e in ((names[0], first_env), (name, env)) if not isinstance(e, dict)]
            notes.append(f"the environment of {' and '.join(unknown)} is unknown (results schema 1): "
                         f"only the task was checked against {names[0]}")
        if diff and not allow_env_mismatch:
            shown = "; ".join(f"{k}: {_short(a)} vs {_short(b)}" for k, a, b in diff[:6])
            more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
            raise LfmPolicyError(f"{name} ran in another environment than {names[0]} ({shown}{more}); "
                                 "pass --allow-env-mismatch to compare anyway")
        if diff:
            notes.append(f"{name}: other environment than {names[0]} ({len(diff)} fields differ)")
        if rec["seed_start"] != first["seed_start"]:
            if not allow_seed_mismatch:
                raise LfmPolicyError(f"{name} starts at seed {rec['seed_start']}, {names[0]} at {first['seed_start']}: "
                                     "the episodes are not paired; pass --allow-seed-mismatch to compare anyway")
            notes.append(f"{name}: seeds start at {rec['seed_start']}, {names[0]}'s at {first['seed_start']} "
                         "(paired where seeds coincide)")
    return notes


def paired_outcomes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Agreement of two runs on the seeds both finished without an error, and McNemar's exact test.

    Returns:
        ``{"n_paired", "both_succeed", "both_fail", "only_a", "only_b", "mcnemar_p"}`` (p = 1 without
        discordant pairs, None without paired seeds).

    """
    from scipy.stats import binomtest

    def outcomes(rec: dict[str, Any]) -> dict[int, bool]:
        return {e["seed"]: bool(e["success"]) for e in rec["episodes"] if e.get("error") is None}

    oa, ob = outcomes(a), outcomes(b)
    seeds = sorted(set(oa) & set(ob))
    both = sum(oa[s] and ob[s] for s in seeds)
    only_a = sum(oa[s] and not ob[s] for s in seeds)
    only_b = sum(ob[s] and not oa[s] for s in seeds)
    discordant = only_a + only_b
    p = binomtest(only_a, discordant, 0.5).pvalue if discordant else (1.0 if seeds else None)
    return {"n_paired": len(seeds), "both_succeed": both, "both_fail": len(seeds) - both - discordant,
            "only_a": only_a, "only_b": only_b, "mcnemar_p": None if p is None else float(p)}


def compare_table(records: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """Markdown table with one row per run."""
    rows = ["| run | task | head | solver | episodes | success | 95 % CI | NFE | chunk ms p50 | chunk ms p95 | "
            "mean length | environment |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in zip(names, records):
        s, lat = r["summary"], r["summary"]["chunk_latency_ms"]
        lo, hi = s["success_ci95"]
        env = r.get("environment", UNKNOWN)
        fp = env["fingerprint"][:12] if isinstance(env, dict) else UNKNOWN
        rows.append(f"| {name} | {r['task']} | {r.get('head') or '–'} | {solver_text(r.get('solver'))} | "
                    f"{s['n_episodes']} | {_fmt(s['success_rate'])} | [{lo:.3f}, {hi:.3f}] | {r['nfe']} | "
                    f"{_fmt(lat['p50'], '.2f')} | {_fmt(lat['p95'], '.2f')} | {_fmt(s['mean_length'], '.1f')} | "
                    f"`{fp}` |")
    return "\n".join(rows)


def paired_table(records: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table of :func:`paired_outcomes` of every run against the first, and its rows."""
    a = names[0]
    rows = [f"| run | paired seeds | both succeed | both fail | only {a} | only this run | McNemar exact p |",
            "|---|---|---|---|---|---|---|"]
    stats = []
    for name, rec in zip(names[1:], records[1:]):
        st = {"run": name, "against": a, **paired_outcomes(records[0], rec)}
        stats.append(st)
        rows.append(f"| {name} | {st['n_paired']} | {st['both_succeed']} | {st['both_fail']} | {st['only_a']} | "
                    f"{st['only_b']} | {_fmt(st['mcnemar_p'], '.4g')} |")
    return "\n".join(rows), stats


def solver_text(solver: dict[str, Any] | list[dict[str, Any]] | None) -> str:
    """``midpoint×4``, ``ddim×10``, ``ddpm``, ``student``, per block ``[student, student, midpoint×2]``."""
    if isinstance(solver, list):
        return "[" + ", ".join(solver_text(s) for s in solver) + "]"
    if not solver:
        return "checkpoint default"
    method = solver.get("method") or solver.get("sampler") or "?"
    steps = solver.get("steps")
    return f"{method}×{steps}" if steps and method != "student" else str(method)


def compare_plot(records: Sequence[dict[str, Any]], names: Sequence[str], path: str | Path) -> Path:
    """PNG with success (and its Wilson interval) against NFE and against chunk latency p50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in zip(names, records):
        s = r["summary"]
        if s["success_rate"] is None:
            continue
        lo, hi = s["success_ci95"]
        yerr = [[s["success_rate"] - lo], [hi - s["success_rate"]]]
        for ax, x in zip(axes, (r["nfe"], s["chunk_latency_ms"]["p50"])):
            if x is not None:
                ax.errorbar([x], [s["success_rate"]], yerr=yerr, fmt="o", capsize=4, label=name)
    for ax, label in zip(axes, ("NFE per chunk", "chunk latency p50 [ms]")):
        ax.set_xlabel(label)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("success vs cost (error bars: Wilson 95 %)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
