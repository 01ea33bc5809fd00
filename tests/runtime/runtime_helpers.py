"""Tiny policies for the runtime tests (every head, low-dim or with one camera), ready to sample."""

from __future__ import annotations

import numpy as np
import torch

from lfm_policy import Policy, PolicyConfig, PolicySpec
from lfm_policy.flow import ChainConfig, SolverConfig
from lfm_policy.heads import HeadConfig, MLPConfig, NetConfig
from lfm_policy.heads.config import DiffusionConfig
from lfm_policy.nets.obs_encoder import ObsEncoderConfig
from lfm_policy.normalizer import LinearNormalizer

LOWDIM_SPEC = PolicySpec(obs_shapes={"agent_pos": (2,), "goal_pos": (2,)}, action_dim=2)
IMAGE_SPEC = PolicySpec(obs_shapes={"cam_image": (16, 16, 3), "agent_pos": (2,)}, image_keys=("cam_image",),
                        action_dim=2)


def tiny_policy(kind: str = "lfm", *, image: bool = False, n_blocks: int = 2, seed: int = 0) -> Policy:
    """An untrained but sampling-ready policy (each stage run for one step, so the EMA copies exist)."""
    torch.manual_seed(seed)
    spec = IMAGE_SPEC if image else LOWDIM_SPEC
    encoder = (ObsEncoderConfig(backbone="small_cnn", crop_shape=(14, 14), num_keypoints=4, rgb_feature_dim=8,
                                small_cnn_channels=(16,)) if image else ObsEncoderConfig())
    cfg = PolicyConfig(
        n_obs_steps=2, horizon=8, n_action_steps=4, encoder=encoder,
        head=HeadConfig(kind=kind, net=NetConfig(family="mlp", mlp=MLPConfig(width=32, depth=1, time_dim=16)),
                        chain=ChainConfig(n_blocks=n_blocks if kind == "lfm" else 1,
                                          sample_solver=SolverConfig(method="euler", steps=2)),
                        diffusion=DiffusionConfig(num_train_timesteps=20, inference_steps=4)),
    )
    stats = {"action": {"min": np.array([-1.0, -2.0]), "max": np.array([1.0, 2.0])},
             "agent_pos": {"min": np.zeros(2), "max": np.ones(2)},
             "goal_pos": {"min": np.zeros(2), "max": np.ones(2)}}
    policy = Policy(cfg, spec, LinearNormalizer.from_stats(stats, image_keys=spec.image_keys))
    b = 4
    g = torch.Generator().manual_seed(seed)
    obs = {k: (torch.randint(0, 256, (b, 2, *s), dtype=torch.uint8, generator=g) if k in spec.image_keys
               else torch.rand(b, 2, *s, generator=g)) for k, s in spec.obs_shapes.items()}
    batch = {"obs": obs, "action": torch.rand(b, 8, 2, generator=g) - 0.5}
    for stage in range(policy.head.n_stages):
        policy.begin_stage(stage)
        policy.compute_loss(batch, stage=stage)[0].backward()
        policy.after_step(stage)
        policy.end_stage(stage)
    return policy.eval()


def random_window(spec: PolicySpec, n_obs_steps: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """One observation window ``{key: (To, ...)}`` as a robot would send it."""
    rng = np.random.default_rng(seed)
    return {k: (rng.integers(0, 256, (n_obs_steps, *s), dtype=np.uint8) if k in spec.image_keys
                else rng.random((n_obs_steps, *s), dtype=np.float32)) for k, s in spec.obs_shapes.items()}
