"""Action heads: ``lfm``, ``fm``, ``diffusion``, ``regression`` behind one interface."""

from lfm_policy.heads.config import DiffusionConfig, DiffusionSampler, HeadConfig, MLPConfig, NetConfig
from lfm_policy.heads.heads import ActionHead, DiffusionHead, FlowHead, RegressionHead, build_head

__all__ = ["ActionHead", "DiffusionConfig", "DiffusionHead", "DiffusionSampler", "FlowHead", "HeadConfig",
           "MLPConfig", "NetConfig", "RegressionHead", "build_head"]
