"""Scripted-expert success per mode (and operator) on the multimodal ``-detour`` tasks.

For each task and mode: N attempts (seeds 0..N-1) of the expert restricted to that mode, counting
successes, collisions with the keep-out column, episodes whose reported mode differs from the chosen
one, and the mean episode length. Prints a Markdown table (docs/demonstrations.md has the measured one).

    python benchmarks/detour_experts.py --episodes 50
    python benchmarks/detour_experts.py --tasks metaworld/reach-v3-detour --operators worse --episodes 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lfm_policy.envs import registry
from lfm_policy.envs.detour import DETOUR_MODES
from lfm_policy.envs.operators import OperatorExpert, get_profile, gripper_dims_for


def measure(task: str, mode: str, episodes: int, operator: str | None) -> dict:
    """Roll out ``episodes`` episodes of the ``mode``-only expert; count outcomes."""
    env = registry.make_env(task)
    expert = registry.make_expert(task, env, modes=[mode])
    if operator:
        expert = OperatorExpert(expert, get_profile(operator), gripper_dims=gripper_dims_for(task),
                                action_low=env.action_space.low, action_high=env.action_space.high)
    ok = collisions = wrong_mode = 0
    lengths = []
    t0 = time.perf_counter()
    try:
        for seed in range(episodes):
            obs, info = env.reset(seed=seed)
            registry.reset_expert(expert, seed)
            step = 0
            for step in range(env.max_episode_steps):  # noqa: B007  (its last value is the length)
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                if terminated or truncated:
                    break
            ok += bool(info["is_success"])
            collisions += bool(info["collision"])
            wrong_mode += info["mode"] is not None and info["mode"] != mode
            lengths.append(step + 1)
    finally:
        env.close()
    return {"ok": ok, "collisions": collisions, "wrong_mode": wrong_mode, "mean_length": float(np.mean(lengths)),
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=list(registry.DETOUR_TASKS))
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--operators", nargs="*", default=[None], help="operator profiles (default: the expert itself)")
    args = p.parse_args()
    print("| task | operator | " + " | ".join(f"{m}: success, collisions, mean length" for m in DETOUR_MODES)
          + " | s |")
    print("|---|---|" + "---|" * (len(DETOUR_MODES) + 1))
    for task in args.tasks:
        for op in args.operators:
            res = [measure(task, m, args.episodes, op) for m in DETOUR_MODES]
            cells = [f"{r['ok']}/{args.episodes}, {r['collisions']}, {r['mean_length']:.1f}"
                     + (f" ({r['wrong_mode']} other side)" if r["wrong_mode"] else "") for r in res]
            print(f"| {task} | {op or 'expert'} | " + " | ".join(cells)
                  + f" | {sum(r['wall_s'] for r in res):.0f} |", flush=True)


if __name__ == "__main__":
    main()
