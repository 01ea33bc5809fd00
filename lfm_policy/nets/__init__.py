"""Networks: time embeddings, velocity networks (UNet, transformer, residual MLP), observation encoders.

Nothing here imports torchvision at module level: the ResNet backbone loads it when it is built.
"""

from lfm_policy.nets.embeddings import SinusoidalTimeEmbedding
from lfm_policy.nets.mlp import ResidualMLP
from lfm_policy.nets.obs_encoder import ObsEncoder, ObsEncoderConfig
from lfm_policy.nets.time_features import FourierTimeEmbedding, make_time_embedding
from lfm_policy.nets.transformer import TransformerConfig, TransformerVelocityNet
from lfm_policy.nets.unet1d import ConditionalUnet1D, Unet1DConfig

__all__ = ["ConditionalUnet1D", "FourierTimeEmbedding", "ObsEncoder", "ObsEncoderConfig", "ResidualMLP",
           "SinusoidalTimeEmbedding", "TransformerConfig", "TransformerVelocityNet", "Unet1DConfig",
           "make_time_embedding"]
