"""Simulator speed and scripted-expert success for the Meta-World and robosuite tasks (1 process).

Measures, per family:

* step: mean seconds of ``env.step`` without images (expert actions, so contacts are realistic);
* render: mean seconds to render one camera at 84 x 84 with the fast settings;
* reset: mean seconds of ``env.reset(seed=...)`` (low-dim env);
* expert success over seeds 0..N-1 (episodes end on success or at ``max_episode_steps``) and the mean
  episode length of the successful episodes;
* episodes/s of expert rollouts (reset + expert + steps), low-dim and with images, in one process.

Times are wall-clock; the ``*_cpu`` twins are this process's CPU time (all its threads), which is
what the wall time would be on otherwise idle cores. Both are reported because shared machines are
often busy (the load average at start and end is recorded).

Usage::

    .venv/bin/python benchmarks/bench_sim_experts.py                      # full (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_sim_experts.py --quick              # smoke test (~1 min)
    .venv/bin/python benchmarks/bench_sim_experts.py --family robosuite --rs-seeds 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

MW_DEFAULT_TASKS = "all"
RS_TASKS = ("Lift", "PickPlaceCan", "NutAssemblySquare")


def rollout(env, expert, seed: int) -> tuple[bool, int, list[tuple[float, float]]]:
    """Run one expert episode; return (success, steps, per-step env.step (wall, cpu) seconds)."""
    obs, _ = env.reset(seed=seed)
    expert.reset()
    times = []
    success, steps = False, 0
    while True:
        action = expert.act(obs)
        t, c = time.perf_counter(), time.process_time()
        obs, _, terminated, truncated, info = env.step(action)
        times.append((time.perf_counter() - t, time.process_time() - c))
        steps += 1
        success = success or bool(info["is_success"])
        if terminated or truncated:
            return success, steps, times


def throughput(make_env, make_expert, seeds) -> dict:
    """Episodes/s and steps/s of expert rollouts (env creation excluded)."""
    env = make_env()
    expert = make_expert(env)
    try:
        env.reset(seed=10_000)  # warm up (first render creates the GL context)
        t0, c0 = time.perf_counter(), time.process_time()
        steps = 0
        successes = 0
        for s in seeds:
            ok, n, _ = rollout(env, expert, s)
            steps += n
            successes += ok
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        env.close()
    return {"episodes": len(seeds), "wall_s": wall, "cpu_s": cpu, "episodes_per_s": len(seeds) / wall,
            "episodes_per_cpu_s": len(seeds) / cpu, "steps_per_s": steps / wall, "success": successes}  # fmt: skip


def timed(fn, n: int, warmup: bool = True) -> tuple[float, float]:
    """Mean (wall, cpu) milliseconds of ``fn()`` over ``n`` calls (after one warm-up call)."""
    if warmup:
        fn()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return 1e3 * (time.perf_counter() - t) / n, 1e3 * (time.process_time() - c) / n


def bench_metaworld(tasks: list[str], n_seeds: int, n_throughput: int) -> dict:
    from lfm_policy.envs.metaworld_tasks import MetaWorldExpert, make_metaworld_env

    out: dict = {"tasks": {}}
    step_times, reset_times = [], []
    for task in tasks:
        env = make_metaworld_env(task)
        expert = MetaWorldExpert(env)
        results = []
        for s in range(n_seeds):
            reset_times.append(timed(lambda s=s, env=env: env.reset(seed=s), 1, warmup=False))
            ok, n, times = rollout(env, expert, s)
            step_times.extend(times)
            results.append((ok, n))
        env.close()
        lens = [n for ok, n in results if ok]
        out["tasks"][task] = {"success": sum(ok for ok, _ in results), "episodes": n_seeds,
                              "mean_len": float(np.mean(lens)) if lens else None}  # fmt: skip
        print(f"  metaworld {task:30s} {out['tasks'][task]['success']}/{n_seeds}  "
              f"mean len {out['tasks'][task]['mean_len']}", flush=True)  # fmt: skip
    out["success_total"] = sum(v["success"] for v in out["tasks"].values())
    out["episodes_total"] = sum(v["episodes"] for v in out["tasks"].values())
    out["step_ms"], out["step_ms_cpu"] = (1e3 * float(x) for x in np.mean(step_times, axis=0))
    out["reset_ms"], out["reset_ms_cpu"] = (float(x) for x in np.mean(reset_times, axis=0))

    # render cost of one camera at 84x84 (fast mujoco.Renderer settings)
    env = make_metaworld_env("pick-place-v3", images=True, camera="corner2")
    env.reset(seed=0)
    out["render_ms_per_camera"], out["render_ms_per_camera_cpu"] = timed(env.render, 50)
    env.close()

    seeds = list(range(100, 100 + n_throughput))
    mk_expert = MetaWorldExpert
    out["throughput_lowdim"] = throughput(lambda: make_metaworld_env("pick-place-v3"), mk_expert, seeds)
    out["throughput_images"] = throughput(lambda: make_metaworld_env("pick-place-v3", images=True), mk_expert, seeds)
    return out


def bench_robosuite(n_seeds: int, n_throughput: int) -> dict:
    from lfm_policy.envs.robosuite_tasks import RobosuiteExpert, make_robosuite_env

    out: dict = {"tasks": {}}
    for task in RS_TASKS:
        t = time.perf_counter()
        env = make_robosuite_env(task)
        create_s = time.perf_counter() - t
        expert = RobosuiteExpert(env)
        results, step_times, reset_times = [], [], []
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(n_seeds):
            reset_times.append(timed(lambda s=s, env=env: env.reset(seed=s), 1, warmup=False))
            ok, n, times = rollout(env, expert, s)
            step_times.extend(times)
            results.append((ok, n))
            if not ok:
                print(f"    {task} seed {s} failed (phase {expert.phase_name})", flush=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        env.close()
        lens = [n for ok, n in results if ok]
        step_ms, step_ms_cpu = (1e3 * float(x) for x in np.mean(step_times, axis=0))
        reset_ms, reset_ms_cpu = (float(x) for x in np.mean(reset_times, axis=0))
        row = {
            "success": sum(ok for ok, _ in results),
            "episodes": n_seeds,
            "mean_len": float(np.mean(lens)) if lens else None,
            "create_s": create_s,
            "reset_ms": reset_ms,
            "reset_ms_cpu": reset_ms_cpu,
            "step_ms": step_ms,
            "step_ms_cpu": step_ms_cpu,
            "lowdim_episodes_per_s": n_seeds / wall,
            "lowdim_episodes_per_cpu_s": n_seeds / cpu,
        }

        env = make_robosuite_env(task, images=True)
        env.reset(seed=0)
        sim = env.robosuite_env.sim
        for cam in ("agentview", "robot0_eye_in_hand"):
            render = lambda cam=cam, sim=sim: sim.render(camera_name=cam, width=84, height=84)  # noqa: E731
            row[f"render_ms_{cam}"], row[f"render_ms_{cam}_cpu"] = timed(render, 30)
        env.close()
        seeds = list(range(200, 200 + n_throughput))
        row["throughput_images"] = throughput(lambda t=task: make_robosuite_env(t, images=True), RobosuiteExpert, seeds)
        out["tasks"][task] = row
        print(f"  robosuite {task:18s} {row['success']}/{n_seeds}  mean len {row['mean_len']}  "
              f"step {row['step_ms']:.1f} ms (cpu {row['step_ms_cpu']:.1f})  render "
              f"{row['render_ms_agentview']:.1f}/{row['render_ms_robot0_eye_in_hand']:.1f} ms (cpu "
              f"{row['render_ms_agentview_cpu']:.1f}/{row['render_ms_robot0_eye_in_hand_cpu']:.1f})  "
              f"ep/s low-dim {row['lowdim_episodes_per_s']:.2f} (per cpu-s "
              f"{row['lowdim_episodes_per_cpu_s']:.2f}) images {row['throughput_images']['episodes_per_s']:.2f} "
              f"(per cpu-s {row['throughput_images']['episodes_per_cpu_s']:.2f})", flush=True)  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["metaworld", "robosuite", "all"], default="all")
    p.add_argument("--mw-tasks", default=MW_DEFAULT_TASKS, help="comma-separated Meta-World tasks or 'all'")
    p.add_argument("--mw-seeds", type=int, default=10)
    p.add_argument("--mw-throughput", type=int, default=100, help="episodes for Meta-World ep/s")
    p.add_argument("--rs-seeds", type=int, default=20)
    p.add_argument("--rs-throughput", type=int, default=5, help="episodes for robosuite ep/s with images")
    p.add_argument("--quick", action="store_true", help="3 Meta-World tasks x 3 seeds, 3 robosuite seeds")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    from lfm_policy.envs.metaworld_tasks import METAWORLD_TASK_NAMES

    mw_tasks = METAWORLD_TASK_NAMES if args.mw_tasks == "all" else args.mw_tasks.split(",")
    if args.quick:
        mw_tasks = ["reach-v3", "pick-place-v3", "drawer-open-v3"]
        args.mw_seeds, args.mw_throughput, args.rs_seeds, args.rs_throughput = 3, 10, 3, 2

    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_start": os.getloadavg(), "MUJOCO_GL": os.environ.get("MUJOCO_GL")},
        "args": vars(args),
    }  # fmt: skip
    if args.family in ("metaworld", "all"):
        print("Meta-World", flush=True)
        results["metaworld"] = bench_metaworld(mw_tasks, args.mw_seeds, args.mw_throughput)
        m = results["metaworld"]
        lo, im = m["throughput_lowdim"], m["throughput_images"]
        print(f"Meta-World: expert {m['success_total']}/{m['episodes_total']}, step {m['step_ms']:.2f} ms "
              f"(cpu {m['step_ms_cpu']:.2f}), reset {m['reset_ms']:.1f} ms (cpu {m['reset_ms_cpu']:.1f}), "
              f"render {m['render_ms_per_camera']:.1f} ms/camera (cpu {m['render_ms_per_camera_cpu']:.1f}), "
              f"ep/s low-dim {lo['episodes_per_s']:.2f} (per cpu-s {lo['episodes_per_cpu_s']:.2f}), "
              f"images {im['episodes_per_s']:.2f} (per cpu-s {im['episodes_per_cpu_s']:.2f})", flush=True)  # fmt: skip
    if args.family in ("robosuite", "all"):
        print("robosuite", flush=True)
        results["robosuite"] = bench_robosuite(args.rs_seeds, args.rs_throughput)
    results["machine"]["load_avg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
