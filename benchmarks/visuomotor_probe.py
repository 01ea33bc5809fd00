"""Does the condition of an image policy carry the scene, and at what scale? (docs/visuomotor.md)

Trains the encoder of ``configs/toy_image_cpu.json`` with an FM head (one stage, AdamW 1e-3, batch 64)
on ``data/toy_images.zarr`` and, every 400 steps, encodes 1 frame in 4 of 120 demonstrations (eval
mode) and reports

* spread: the mean over condition features of their standard deviation across frames;
* R²: a least-squares linear probe, fit on the first half of the frames and scored on the second,
  of agent x, y, goal x, y and obstacle x, y, r.

Variants: ``none`` (camera features as the linear layer gives them), ``layer`` (+ LayerNorm with its
affine parameters), ``batch`` (``encoder.feature_norm``: BatchNorm without affine, the default).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/visuomotor_probe.py --variants none layer batch --steps 800
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lfm_policy import Policy, PolicySpec
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.normalizer import LinearNormalizer
from lfm_policy.train import TrainConfig, training_windows

DATA = "data/toy_images.zarr"


def probe_frames(n_episodes: int = 120) -> tuple[torch.Tensor, np.ndarray]:
    """(N, 32, 32, 3) uint8 frames and their (N, 7) scene state."""
    buf = ReplayBuffer.open(DATA)
    frames, state = [], []
    for i in range(n_episodes):
        ep = buf.get_episode(i)
        frames.append(ep["top_image"][::4])
        state.append(np.concatenate([ep["agent_pos"], ep["goal_pos"], ep["obstacles"]], 1)[::4])
    return torch.as_tensor(np.concatenate(frames)), np.concatenate(state)


def measure(policy: Policy, frames: torch.Tensor, state: np.ndarray) -> tuple[float, np.ndarray]:
    policy.eval()
    with torch.no_grad():
        feats = policy.encode({"top_image": frames[:, None].repeat(1, 2, 1, 1, 1)}, ema=False).numpy()
    policy.train()
    half = len(feats) // 2
    design = np.c_[feats, np.ones(len(feats))]
    weights = np.linalg.lstsq(design[:half], state[:half], rcond=None)[0]
    resid = ((design[half:] @ weights - state[half:]) ** 2).sum(0)
    r2 = 1 - resid / ((state[half:] - state[half:].mean(0)) ** 2).sum(0)
    return float(feats.std(0).mean()), r2


def run(variant: str, steps: int, frames: torch.Tensor, state: np.ndarray) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig.from_json("configs/toy_image_cpu.json").with_overrides(
        [f"data.path={DATA}", "policy.head.kind=fm", f"policy.encoder.feature_norm={str(variant == 'batch').lower()}"])
    ds = training_windows(cfg, ["top_image"])
    stats = {k: v for k, v in ds.get_stats().items() if k != "top_image"}
    spec = PolicySpec(obs_shapes={"top_image": (32, 32, 3)}, image_keys=("top_image",), action_dim=2)
    policy = Policy(cfg.policy, spec, LinearNormalizer.from_stats(stats)).train()
    if variant == "layer":
        net = policy.encoder.rgb_nets[0]
        net.proj = torch.nn.Sequential(net.proj, torch.nn.LayerNorm(net.proj.out_features))
    opt = torch.optim.AdamW(list(policy.encoder.parameters()) + list(policy.head.stage_parameters(0)), 1e-3)
    loader = ds.make_loader(64)
    it, t0 = iter(loader), time.perf_counter()
    for step in range(steps + 1):
        if step % 400 == 0:
            spread, r2 = measure(policy, frames, state)
            print(f"| {variant} | {step} | {time.perf_counter() - t0:.0f} | {spread:.4f} | "
                  f"{' / '.join(f'{v:.2f}' for v in r2)} |", flush=True)
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss, _ = policy.compute_loss(batch, stage=0)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["none", "layer", "batch"], choices=["none", "layer", "batch"])
    ap.add_argument("--steps", type=int, default=800)
    args = ap.parse_args()
    torch.set_num_threads(1)
    frames, state = probe_frames()
    print("| features | step | s | spread | R² agent x / y, goal x / y, obstacle x / y / r |\n|---|---|---|---|---|")
    for v in args.variants:
        run(v, args.steps, frames, state)


if __name__ == "__main__":
    main()
