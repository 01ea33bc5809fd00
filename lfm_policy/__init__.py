"""lfm-policy: robot imitation policies whose action head is a conditional Local Flow Matching model.

Importing this package loads only torch, numpy, einops and the standard library. Data formats,
simulators and evaluation live in ``lfm_policy.datasets``, ``lfm_policy.envs`` and ``lfm_policy.eval``
and are imported on demand.
"""

__version__ = "0.1.0"

from lfm_policy.flow import (  # noqa: E402  (version first: setuptools reads it)
    FlowBlock,
    LocalFlowChain,
    OUSchedule,
    SolverConfig,
)
from lfm_policy.policy import ActionQueue, Policy, PolicyConfig, PolicySpec  # noqa: E402

__all__ = ["ActionQueue", "FlowBlock", "LocalFlowChain", "OUSchedule", "Policy", "PolicyConfig", "PolicySpec",
           "SolverConfig", "__version__"]
