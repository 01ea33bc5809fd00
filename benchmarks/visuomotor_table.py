"""The visuomotor table of ``docs/visuomotor.md``: image policies trained and evaluated on this CPU.

Each cell trains one policy with ``lfm-policy train`` (a shipped config + overrides), evaluates it with
``lfm-policy eval`` on 50 episodes from seed 100000 (the same seeds for every cell of a task: paired)
and reads train minutes (the run's ``stage_wall_s``), success ± Wilson interval and chunk latency p50
(batch 1, in the eval process). Resumable: a cell whose ``eval/results.json`` exists is only read; a
cell with a finished run is only evaluated. Cells may name another cell whose checkpoint gives their
encoder (``init_encoder_from``, the "FM first" rows).

Datasets (collect them first; the commands are in ``DATA``)::

    MUJOCO_GL=egl OMP_NUM_THREADS=1 .venv/bin/python benchmarks/visuomotor_table.py --collect
    MUJOCO_GL=egl OMP_NUM_THREADS=1 .venv/bin/python benchmarks/visuomotor_table.py --cells toy_lfm toy_fm ...
    .venv/bin/python benchmarks/visuomotor_table.py --table          # print the markdown table

Two cells can run at once on 2 cores (one torch thread each): ``--cells`` in two shells. Times in the
table were measured that way, so each cell had one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin" / "lfm-policy"
OUT = ROOT / "runs" / "visuomotor"
EPISODES, SEED_START = 50, 100000

DATA = {
    "toy": ("data/toy_images.zarr", ["collect", "--task", "toy/point-obstacle", "--episodes", "200", "--images",
                                     "--image-size", "32"]),
    "toy64": ("data/toy_images64.zarr", ["collect", "--task", "toy/point-obstacle", "--episodes", "200",
                                         "--images", "--image-size", "64"]),
    "mw": ("data/metaworld_button-press-topdown-v3_images.zarr",
           ["collect", "--task", "metaworld/button-press-topdown-v3", "--episodes", "150", "--images",
            "--image-size", "48", "--env-arg", "camera=corner3"]),
    "lift": ("data/robosuite_Lift_images.zarr", ["collect", "--task", "robosuite/Lift", "--episodes", "150",
                                                 "--images", "--image-size", "48"]),
}
TASK = {"toy": "toy/point-obstacle", "toy64": "toy/point-obstacle", "mw": "metaworld/button-press-topdown-v3",
        "lift": "robosuite/Lift"}
CONFIG = {"toy": "toy_image_cpu", "toy64": "toy_image_cpu", "mw": "metaworld_image_cpu",
          "lift": "robosuite_image_cpu"}
TOY_LOWDIM = '["agent_pos", "goal_pos", "obstacles"]'
LIFT_PROPRIO = '["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]'

# name: (data, observation label, overrides, encoder-from cell or None)
NONORM = "policy.encoder.feature_norm=false"
FIRST = "policy.encoder_training=first_stage"  # the image configs' default is fm_first
CELLS: dict[str, tuple[str, str, list[str], str | None]] = {
    # before camera-feature standardization (encoder.feature_norm, now the default)
    "toy_lfm_nonorm": ("toy", "top 32 px", [FIRST, NONORM], None),
    "toy_lfm_crop_nonorm": ("toy", "top 32 px", [FIRST, NONORM, "policy.encoder.crop_shape=[28, 28]"], None),
    "toy_lfm_every_crop_nonorm": ("toy", "top 32 px", [NONORM, "policy.encoder.crop_shape=[28, 28]",
                                                       "policy.encoder_training=every_stage"], None),
    "toy_fm2k_nonorm": ("toy", "top 32 px", [NONORM, "policy.head.kind=fm", "total_steps=2000"], None),
    "toy_lfm_fmfirst_nonorm": ("toy", "top 32 px", [NONORM, "total_steps=6000", "policy.encoder_training=frozen"],
                               "toy_fm2k_nonorm"),
    "toy_regression2k_nonorm": ("toy", "top 32 px", [NONORM, "policy.head.kind=regression", "total_steps=2000"],
                                None),
    "toy_lfm_regfirst_nonorm": ("toy", "top 32 px", [NONORM, "total_steps=6000", "policy.encoder_training=frozen"],
                                "toy_regression2k_nonorm"),
    # toy from pixels only: encoder training, crops, EMA, heads, backbone, vs low-dim
    "toy_lfm": ("toy", "top 32 px", [FIRST], None),
    "toy_lfm_every": ("toy", "top 32 px", ["policy.encoder_training=every_stage"], None),
    "toy_fm2k": ("toy", "top 32 px", ["policy.head.kind=fm", "total_steps=2000"], None),
    "toy_lfm_fmfirst": ("toy", "top 32 px", ["total_steps=6000", "policy.encoder_training=frozen"], "toy_fm2k"),
    "toy_regression2k": ("toy", "top 32 px", ["policy.head.kind=regression", "total_steps=2000"], None),
    "toy_lfm_regfirst": ("toy", "top 32 px", ["total_steps=6000", "policy.encoder_training=frozen"],
                         "toy_regression2k"),
    "toy_lfm_fmfirst_run": ("toy", "top 32 px", ["policy.encoder_training=fm_first"], None),
    "toy_lfm_crop": ("toy", "top 32 px", [FIRST, "policy.encoder.crop_shape=[28, 28]"], None),
    "toy_lfm_every_crop": ("toy", "top 32 px", ["policy.encoder.crop_shape=[28, 28]",
                                                "policy.encoder_training=every_stage"], None),
    "toy_lfm_noema": ("toy", "top 32 px", [FIRST, "policy.encoder_ema=false"], None),
    "toy_fm": ("toy", "top 32 px", ["policy.head.kind=fm"], None),
    "toy_regression": ("toy", "top 32 px", ["policy.head.kind=regression"], None),
    "toy_lfm_resnet64": ("toy64", "top 64 px", ["policy.encoder.backbone=resnet18", "total_steps=2000"], None),
    "toy_lfm_small64": ("toy64", "top 64 px", ["total_steps=2000"], None),
    "toy_lfm_lowdim": ("toy", "low-dim", [f"data.obs_keys={TOY_LOWDIM}"], None),
    # Meta-World button-press-topdown: corner3 48 px + proprio
    "mw_lfm": ("mw", "corner3 48 px + proprio", [FIRST], None),
    "mw_lfm_nocrop": ("mw", "corner3 48 px + proprio", [FIRST, "policy.encoder.crop_shape=null"], None),
    "mw_fm": ("mw", "corner3 48 px + proprio", ["policy.head.kind=fm"], None),
    "mw_fm1500": ("mw", "corner3 48 px + proprio", ["policy.head.kind=fm", "total_steps=1500"], None),
    "mw_lfm_fmfirst": ("mw", "corner3 48 px + proprio", ["total_steps=4500", "policy.encoder_training=frozen"],
                       "mw_fm1500"),
    "mw_lfm_fmfirst_run": ("mw", "corner3 48 px + proprio", ["policy.encoder_training=fm_first"], None),
    "mw_lfm_proprio": ("mw", "proprio only", ['data.obs_keys=["proprio"]'], None),
    "mw_lfm_lowdim": ("mw", "low-dim state (39)", ['data.obs_keys=["state"]'], None),
    # robosuite Lift: agentview + wrist 48 px + proprio
    "lift_lfm": ("lift", "agentview + wrist 48 px + proprio", [FIRST], None),
    "lift_lfm_fmfirst_run": ("lift", "agentview + wrist 48 px + proprio", ["policy.encoder_training=fm_first"],
                             None),
    "lift_lfm_nocrop": ("lift", "agentview + wrist 48 px + proprio", ["policy.encoder.crop_shape=null"], None),
    "lift_lfm_proprio": ("lift", "proprio only", [f"data.obs_keys={LIFT_PROPRIO}"], None),
    "lift_lfm_lowdim": ("lift", "low-dim (object + proprio)",
                        ['data.obs_keys=["object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]'],
                        None),
}

# distilled cells: name -> the cell whose checkpoint is the teacher (``lfm-policy distill``, its defaults)
DISTILLED = {"toy_lfm_fmfirst_run_distilled": "toy_lfm_fmfirst_run",
             "mw_lfm_fmfirst_run_distilled": "mw_lfm_fmfirst_run", "lift_lfm_distilled": "lift_lfm",
             "lift_lfm_fmfirst_run_distilled": "lift_lfm_fmfirst_run"}


def cli(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    print("$ lfm-policy " + " ".join(args), flush=True)
    subprocess.run([str(BIN), *args], check=True, env=env, cwd=ROOT)


def ckpt(name: str) -> Path:
    return OUT / name / "checkpoints" / "latest"


def run_cell(name: str) -> None:
    if name in DISTILLED:
        return run_distilled(name)
    data, _, overrides, encoder_from = CELLS[name]
    out = OUT / name
    if not (out / "status.json").exists() or json.loads((out / "status.json").read_text()).get("state") != "complete":
        if encoder_from is not None:
            if not ckpt(encoder_from).exists():
                run_cell(encoder_from)
            overrides = [*overrides, f"init_encoder_from={ckpt(encoder_from)}"]
        resume = ["--resume", str(out)] if (out / "train_config.json").exists() else \
            ["--config", str(ROOT / "configs" / f"{CONFIG[data]}.json"), f"data.path={DATA[data][0]}",
             f"out_dir={out}", *overrides]
        cli("train", *resume, "--no-progress")
    if not (out / "eval" / "results.json").exists():
        cli("eval", str(ckpt(name)), "--task", TASK[data], "--episodes", str(EPISODES), "--seed-start",
            str(SEED_START), "--out", str(out / "eval"), "--no-progress")


def run_distilled(name: str) -> None:
    teacher = DISTILLED[name]
    out = OUT / name
    if not ckpt(teacher).exists():
        run_cell(teacher)
    if not (out / "status.json").exists() or json.loads((out / "status.json").read_text()).get("state") != "complete":
        cli("distill", *(["--resume", str(out)] if (out / "train_config.json").exists() else
                         [str(ckpt(teacher)), "--out", str(out)]), "--no-progress")
    if not (out / "eval" / "results.json").exists():
        cli("eval", str(ckpt(name)), "--task", TASK[CELLS[teacher][0]], "--episodes", str(EPISODES),
            "--seed-start", str(SEED_START), "--out", str(out / "eval"), "--no-progress")


def cell_row(name: str) -> dict | None:
    if name in DISTILLED:
        return distilled_row(name)
    out = OUT / name
    res = out / "eval" / "results.json"
    if not res.exists():
        return None
    rec = json.loads(res.read_text())
    s = rec["summary"]
    cfg = json.loads((out / "train_config.json").read_text())
    walls = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    minutes = sum(r["stage_wall_s"] for r in walls if "stage_wall_s" in r) / 60
    steps = sum(cfg["stage_steps"] or []) or cfg["total_steps"]
    enc = cfg["policy"]["encoder"]
    data, obs, _, encoder_from = CELLS[name]
    if encoder_from is not None:
        prev = cell_row_meta(encoder_from)
        minutes += prev["minutes"]
        steps = f"{prev['steps']} {prev['head']} + {steps}"
    images = any(k.endswith("_image") for k in cfg["data"]["obs_keys"])
    pol = cfg["policy"]
    notes = [enc["backbone"], f"crop {enc['crop_shape'] or 'none'}", pol["encoder_training"]]
    notes += [] if enc.get("feature_norm", False) else ["no feature norm"]
    notes += [] if pol.get("encoder_ema", True) else ["no encoder EMA"]
    return {"cell": name, "task": TASK[data], "obs": obs, "head": pol["head"]["kind"],
            "encoder": ", ".join(notes) if images else "-",
            "steps": steps, "minutes": minutes, "n": s["n_episodes"], "k": s["n_success"],
            "rate": s["success_rate"], "ci": s["success_ci95"], "chunk_ms": s["chunk_latency_ms"]["p50"],
            "nfe": rec.get("nfe")}


def distilled_row(name: str) -> dict | None:
    res = OUT / name / "eval" / "results.json"
    teacher = cell_row(DISTILLED[name])
    if not res.exists() or teacher is None:
        return None
    rec = json.loads(res.read_text())
    s = rec["summary"]
    walls = [json.loads(line) for line in (OUT / name / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((OUT / name / "train_config.json").read_text())
    return {**teacher, "cell": name, "head": "lfm distilled",
            "steps": f"{teacher['steps']} + {cfg['total_steps']} distill",
            "minutes": teacher["minutes"] + sum(r["stage_wall_s"] for r in walls if "stage_wall_s" in r) / 60,
            "n": s["n_episodes"], "k": s["n_success"], "rate": s["success_rate"], "ci": s["success_ci95"],
            "chunk_ms": s["chunk_latency_ms"]["p50"], "nfe": rec.get("nfe")}


def cell_row_meta(name: str) -> dict:
    out = OUT / name
    cfg = json.loads((out / "train_config.json").read_text())
    walls = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"minutes": sum(r["stage_wall_s"] for r in walls if "stage_wall_s" in r) / 60,
            "steps": cfg["total_steps"], "head": cfg["policy"]["head"]["kind"]}


def table() -> str:
    lines = ["| cell | task | observation | head | encoder (training) | steps | train min | success (50 ep) "
             "| 95 % CI | NFE | chunk ms p50 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in [*CELLS, *DISTILLED]:
        r = cell_row(name)
        if r is None:
            continue
        lines.append(f"| {name} | {r['task']} | {r['obs']} | {r['head']} | {r['encoder']} | {r['steps']} | "
                     f"{r['minutes']:.1f} | {r['k']}/{r['n']} = {r['rate']:.2f} | {r['ci'][0]:.2f}–{r['ci'][1]:.2f} | "
                     f"{r['nfe']} | {r['chunk_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", nargs="*", default=None, help="collect these datasets (default: all missing)")
    ap.add_argument("--cells", nargs="*", default=[], help=f"cells to run, from {', '.join(CELLS)}")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.collect is not None:
        for key in args.collect or DATA:
            path, cmd = DATA[key]
            if not (ROOT / path).exists():
                cli(*cmd, "--out", path, "--no-progress")
    for name in args.cells:
        if name not in CELLS and name not in DISTILLED:
            sys.exit(f"unknown cell {name!r}; known: {', '.join([*CELLS, *DISTILLED])}")
        run_cell(name)
    if args.table:
        print(table())


if __name__ == "__main__":
    main()
