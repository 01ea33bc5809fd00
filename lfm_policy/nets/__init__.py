"""Networks: time embeddings, velocity networks, observation encoders."""

from lfm_policy.nets.embeddings import SinusoidalTimeEmbedding
from lfm_policy.nets.mlp import ResidualMLP

__all__ = ["ResidualMLP", "SinusoidalTimeEmbedding"]
