"""Chunk latency at batch 1 of every row of ``distill_table.py``, measured in one quiet process.

``distill_table.py`` times its rows while it trains and evaluates (other processes may share the CPU);
this script reloads the same checkpoints and times every row of every task in this one process, rows
interleaved over ``--rounds`` rounds so that load drifts hit every row alike, and writes
OUT/latency.json and a Markdown table with the ratio of each row to DDIM-10 of the same task.

    python benchmarks/distill_latency.py --out outputs/distill_table
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from distill_table import canonical, first_window, latency_ms, rows, slug

from lfm_policy import Policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/distill_table")
    p.add_argument("--reps", type=int, default=100, help="timed calls per row and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = {}
    for res in sorted(out.glob("*/results.json")):
        task = json.loads(res.read_text())[0]["task"]
        run = out / slug(task)
        ckpt = {(k, d): run / (f"{k}_distilled" if d else k) / "checkpoints" / "latest"
                for k in ("lfm", "fm", "diffusion", "regression") for d in (False, True)}
        teacher = Policy.load(ckpt[("lfm", False)])
        obs = first_window(out / "data" / f"{slug(task)}.zarr", teacher)
        table = rows(teacher.head.chain.n_blocks)
        policies = {(k, d): Policy.load(ckpt[(k, d)]) for _, k, d, _ in table}
        times: dict[str, list[float]] = {label: [] for label, *_ in table}
        for _ in range(args.rounds):
            for label, kind, distilled, sampler in table:
                times[label].append(latency_ms(policies[(kind, distilled)], obs, sampler, args.reps))
        lat = {label: statistics.median(v) for label, v in times.items()}
        results[task] = {canonical(label): {"ms": ms, "ratio_to_ddim10": ms / lat["DDIM-10"],
                                 "nfe": policies[(kind, d)].nfe(sampler)}
                         for (label, kind, d, sampler), ms in zip(table, lat.values())}
        print(task, {k: round(v["ms"], 2) for k, v in results[task].items()}, flush=True)
    (out / "latency.json").write_text(json.dumps(results, indent=2))
    labels = list(next(iter(results.values())))
    print("\n| row | NFE | latency ms (median over tasks) | ÷ DDIM-10 (median over tasks) |\n|---|---|---|---|")
    for label in labels:
        ms = statistics.median(results[t][label]["ms"] for t in results)
        ratio = statistics.median(results[t][label]["ratio_to_ddim10"] for t in results)
        nfes = "/".join(sorted({str(results[t][label]["nfe"]) for t in results}))
        print(f"| {label} | {nfes} | {ms:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
