"""Conditional Local Flow Matching (arXiv 2410.02548): OU schedule, interpolants, solvers, blocks, chain.

Time convention, used everywhere in this package:

* Inside a block, **t = 0 is the data side and t = 1 the noise side** (the paper's direction).
* Training pairs are built by integrating earlier blocks t: 0 → 1 (pushforward towards noise).
* Generation starts from z ~ N(0, I) and runs blocks N−1, …, 0, each integrated t: 1 → 0.

Every velocity field is ``v(x, t, cond)`` with x (B, *event_shape), t (B,) and cond (B, Dc) or None.
Tensors are named by role: ``x_data_side`` (t = 0 end of a block) and ``x_noise_side`` (t = 1 end).
"""

from lfm_policy.flow.block import FlowBlock
from lfm_policy.flow.chain import ChainConfig, LocalFlowChain
from lfm_policy.flow.fit import FitConfig, fit_chain
from lfm_policy.flow.interpolants import (
    InterpolantSample,
    LinearInterpolant,
    TrigInterpolant,
    make_interpolant,
)
from lfm_policy.flow.likelihood import log_prob
from lfm_policy.flow.schedule import OUSchedule, ou_step
from lfm_policy.flow.solvers import SolverConfig, integrate, integrate_adaptive, integrate_fixed

DATA_SIDE_TIME = 0.0
NOISE_SIDE_TIME = 1.0

__all__ = [
    "DATA_SIDE_TIME",
    "NOISE_SIDE_TIME",
    "ChainConfig",
    "FitConfig",
    "FlowBlock",
    "InterpolantSample",
    "LinearInterpolant",
    "LocalFlowChain",
    "OUSchedule",
    "SolverConfig",
    "TrigInterpolant",
    "fit_chain",
    "integrate",
    "integrate_adaptive",
    "integrate_fixed",
    "log_prob",
    "make_interpolant",
    "ou_step",
]
