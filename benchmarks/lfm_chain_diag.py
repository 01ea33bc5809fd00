"""Where an LFM (or FM) policy's samples go wrong: chunk error and outliers, block by block.

On 256 random training windows of a replay buffer (fixed seed, fixed noise):

* chunk MSE against the demonstrated chunk for several solvers, with and without clamping to the
  normalized action range, and the fraction of chunks whose MSE exceeds 0.5;
* for flow heads, block by block in sampling order: the largest |x| of the samples after each block
  and of the data pushed through the earlier blocks (what that block was trained on).

    python benchmarks/lfm_chain_diag.py outputs/sim_heads/robosuite_PickPlaceCan/lfm/checkpoints/latest \
        outputs/sim_heads/data/robosuite_PickPlaceCan.zarr
"""

from __future__ import annotations

import argparse

import torch

from lfm_policy import Policy
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.torch_dataset import SequenceDataset
from lfm_policy.flow import SolverConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("buffer", help="the zarr replay buffer the policy was trained on")
    p.add_argument("--n", type=int, default=256, help="training windows")
    args = p.parse_args()
    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint).eval()
    cfg = policy.config
    ds = SequenceDataset(ReplayBuffer.open(args.buffer), horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps,
                         n_action_steps=cfg.n_action_steps, obs_keys=list(policy.spec.obs_shapes))
    g = torch.Generator().manual_seed(0)
    items = [ds[int(i)] for i in torch.randint(0, len(ds), (args.n,), generator=g)]
    obs = {k: torch.stack([torch.as_tensor(it["obs"][k]) for it in items]) for k in items[0]["obs"]}
    action = torch.stack([torch.as_tensor(it["action"]) for it in items])  # (n, H, Da)
    noise = torch.randn(action.shape, generator=g)
    cond = policy.encode(obs)
    flow = hasattr(policy.head, "chain")
    solvers = [SolverConfig(method="midpoint", steps=1), SolverConfig(method="midpoint", steps=4)] if flow \
        else [None]
    for solver in solvers:
        raw = policy.head.sample(cond, noise=noise, solver=solver)  # normalized (n, H, Da)
        for clamp in (False, True):
            chunk = policy.normalizer.unnormalize_key("action", raw.clamp(-1, 1) if clamp else raw)
            err = ((chunk - action) ** 2).mean((1, 2))  # (n,)
            name = f"{solver.method}×{solver.steps}" if solver else "default"
            print(f"{name:<12} clamp={clamp!s:<5} chunk MSE {err.mean():.4f}  chunks with MSE > 0.5: "
                  f"{(err > 0.5).float().mean():.1%}  max |normalized action| {raw.abs().amax():.2f}")
    if not flow:
        return
    chain = policy.head.chain
    target = policy.normalizer.normalize_key("action", action)
    x = noise
    solver = SolverConfig(method="midpoint", steps=4)
    for n in reversed(range(chain.n_blocks)):
        x = chain.ema_blocks[n].reverse_transport(x, cond, solver)
        pushed = chain.push(target, cond, n)  # the data side block n was trained on
        print(f"block {n}: samples after it max |x| {x.abs().amax():.2f} (std {x.std():.2f}); data pushed "
              f"through the {n} earlier block(s): max |x| {pushed.abs().amax():.2f} (std {pushed.std():.2f})")


if __name__ == "__main__":
    main()
