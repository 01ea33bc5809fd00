"""Observation encoder: camera images and low-dim keys of To frames → one condition vector (B, Dc).

Per frame, every camera image goes through a CNN (ResNet-18 with GroupNorm, or a small CNN) and a
spatial-softmax keypoint head plus a linear layer; the low-dim keys are concatenated (optionally
through an MLP); the per-frame features of the To frames are flattened into one vector. Images are
randomly cropped in training mode and center-cropped in eval mode (the module's ``training`` flag).

Keys are processed in sorted order, so the layout of the output does not depend on dict order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lfm_policy.config import Config, check
from lfm_policy.errors import LfmPolicyError
from lfm_policy.nets.vision import BACKBONES, ImageFeatureNet, crop_images


@dataclasses.dataclass
class ObsEncoderConfig(Config):
    """Hyperparameters of :class:`ObsEncoder` (the observation keys and shapes come from the data).

    Attributes:
        backbone: ``"resnet18"`` (torchvision, random init, GroupNorm) or ``"small_cnn"`` (light, for
            tests and CPU runs).
        share_rgb_model: One image network for all cameras (True) or one per camera (False).
        crop_shape: (h, w) crop: random in training, center at inference; None keeps full images.
        num_keypoints: Spatial-softmax keypoints per camera.
        rgb_feature_dim: Feature size per camera and frame (after the linear layer on the keypoints).
        lowdim_mlp_dims: Hidden/output sizes of an MLP on the concatenated low-dim keys (ReLU between
            layers); empty = concatenate them as they are.
        small_cnn_channels: Channels of the ``small_cnn`` layers (multiples of 16, for GroupNorm).
        feature_norm: Standardize each camera feature over the batch (running statistics at inference;
            see :class:`~lfm_policy.nets.vision.ImageFeatureNet`). Without it image policies trained by
            flow matching on this CPU's budgets ignored the image (docs/visuomotor.md).

    """

    backbone: str = "resnet18"
    share_rgb_model: bool = False
    crop_shape: tuple[int, int] | None = (76, 76)
    num_keypoints: int = 32
    rgb_feature_dim: int = 64
    lowdim_mlp_dims: tuple[int, ...] = ()
    small_cnn_channels: tuple[int, ...] = (32, 64, 64)
    feature_norm: bool = True

    def __post_init__(self) -> None:
        check(self.backbone in BACKBONES, "backbone", f"must be one of {BACKBONES}, got {self.backbone!r}")
        if self.crop_shape is not None:
            self.crop_shape = tuple(int(s) for s in self.crop_shape)
            check(len(self.crop_shape) == 2 and min(self.crop_shape) >= 1, "crop_shape",
                  f"must be (h, w) with positive sizes or null, got {self.crop_shape}")
        check(self.num_keypoints >= 1, "num_keypoints", f"must be ≥ 1, got {self.num_keypoints}")
        check(self.rgb_feature_dim >= 1, "rgb_feature_dim", f"must be ≥ 1, got {self.rgb_feature_dim}")
        self.lowdim_mlp_dims = tuple(int(d) for d in self.lowdim_mlp_dims)
        check(all(d >= 1 for d in self.lowdim_mlp_dims), "lowdim_mlp_dims",
              f"must be positive, got {self.lowdim_mlp_dims}")
        self.small_cnn_channels = tuple(int(c) for c in self.small_cnn_channels)
        chans = self.small_cnn_channels
        check(len(chans) >= 1 and all(c >= 16 and c % 16 == 0 for c in chans), "small_cnn_channels",
              f"must be non-empty multiples of 16, got {chans}")

    def output_dim(self, obs_shapes: Mapping[str, Sequence[int]], n_obs_steps: int) -> int:
        """Size Dc of the encoder output for these observations, computed without building the net.

        Args:
            obs_shapes: Per-frame shape of each key: (C, H, W) for images, (D,) for low-dim.
            n_obs_steps: To.

        """
        rgb, lowdim = split_obs_keys(obs_shapes)
        lowdim_size = sum(int(obs_shapes[k][0]) for k in lowdim)
        if lowdim and self.lowdim_mlp_dims:
            lowdim_size = self.lowdim_mlp_dims[-1]
        return n_obs_steps * (len(rgb) * self.rgb_feature_dim + lowdim_size)


def split_obs_keys(obs_shapes: Mapping[str, Sequence[int]]) -> tuple[list[str], list[str]]:
    """Sorted image keys (3-D shapes) and low-dim keys (1-D shapes).

    Raises:
        LfmPolicyError: Naming a key whose shape is neither (C, H, W) nor (D,), or when there are no keys.

    """
    if not obs_shapes:
        raise LfmPolicyError("ObsEncoder: no observation keys given")
    rgb, lowdim = [], []
    for key in sorted(obs_shapes):
        shape = tuple(obs_shapes[key])
        if len(shape) == 3 and min(shape) >= 1:
            rgb.append(key)
        elif len(shape) == 1 and shape[0] >= 1:
            lowdim.append(key)
        else:
            raise LfmPolicyError(f"ObsEncoder: observation {key!r} has per-frame shape {shape}; "
                                 "expected (C, H, W) for an image or (D,) for a low-dim key")
    return rgb, lowdim


class ObsEncoder(nn.Module):
    """Encode ``{key: (B, To, ...)}`` into (B, Dc).

    Args:
        config: Encoder hyperparameters.
        obs_shapes: Per-frame shape of each key: (C, H, W) for images (float in [0, 1]) and (D,) for
            low-dim keys (already normalized).
        n_obs_steps: To, the number of frames per sample.

    Raises:
        LfmPolicyError: On a bad shape, a crop larger than an image, or cameras of different channel
            counts sharing one network (the key is named).

    """

    def __init__(self, config: ObsEncoderConfig, obs_shapes: Mapping[str, Sequence[int]], n_obs_steps: int):
        super().__init__()
        if n_obs_steps < 1:
            raise LfmPolicyError(f"ObsEncoder: n_obs_steps must be ≥ 1, got {n_obs_steps}")
        self.config = config
        self.obs_shapes = {k: tuple(int(s) for s in obs_shapes[k]) for k in sorted(obs_shapes)}
        self.n_obs_steps = int(n_obs_steps)
        self.rgb_keys, self.lowdim_keys = split_obs_keys(self.obs_shapes)
        self._output_dim = config.output_dim(self.obs_shapes, self.n_obs_steps)

        for key in self.rgb_keys:
            _, h, w = self.obs_shapes[key]
            if config.crop_shape is not None and (config.crop_shape[0] > h or config.crop_shape[1] > w):
                raise LfmPolicyError(f"ObsEncoder: crop_shape {config.crop_shape} is larger than image "
                                     f"{key!r} of size {(h, w)}")
        channels = {k: self.obs_shapes[k][0] for k in self.rgb_keys}
        if config.share_rgb_model and len(set(channels.values())) > 1:
            raise LfmPolicyError(f"ObsEncoder: share_rgb_model needs cameras with equal channels, "
                                 f"got {channels}")

        def image_net(in_channels: int) -> ImageFeatureNet:
            return ImageFeatureNet(config.backbone, in_channels, config.num_keypoints, config.rgb_feature_dim,
                                   config.small_cnn_channels, config.feature_norm)

        # ModuleList in sorted-key order (ModuleDict would reject keys containing dots).
        if not self.rgb_keys:
            self.rgb_nets = nn.ModuleList()
        elif config.share_rgb_model:
            self.rgb_nets = nn.ModuleList([image_net(channels[self.rgb_keys[0]])])
        else:
            self.rgb_nets = nn.ModuleList(image_net(channels[k]) for k in self.rgb_keys)

        layers: list[nn.Module] = []
        d_in = sum(self.obs_shapes[k][0] for k in self.lowdim_keys)
        if self.lowdim_keys:
            for i, d in enumerate(config.lowdim_mlp_dims):
                layers.append(nn.Linear(d_in, d))
                if i < len(config.lowdim_mlp_dims) - 1:
                    layers.append(nn.ReLU())
                d_in = d
        self.lowdim_net = nn.Sequential(*layers)  # empty Sequential = identity

    @property
    def output_dim(self) -> int:
        """Dc, the size of the condition vector."""
        return self._output_dim

    def forward(self, obs: Mapping[str, torch.Tensor],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode a batch of observations.

        Args:
            obs: ``{key: (B, To, C, H, W)}`` float images in [0, 1] and ``{key: (B, To, D)}`` low-dim
                values, exactly the keys given at construction.
            generator: CPU generator for the random crops in training mode (default: global RNG).

        Returns:
            (B, Dc) with Dc = :attr:`output_dim`.

        Raises:
            LfmPolicyError: Naming a missing or unknown key, or a key of the wrong shape or dtype.

        """
        b = self._check(obs)
        crop = self.config.crop_shape
        per_frame = []  # each (B*To, F)
        for i, key in enumerate(self.rgb_keys):
            images = obs[key].flatten(0, 1)  # (B*To, C, H, W)
            if crop is not None:
                images = crop_images(images, crop, random=self.training, generator=generator)
            net = self.rgb_nets[0 if self.config.share_rgb_model else i]
            per_frame.append(net(images))  # (B*To, rgb_feature_dim)
        if self.lowdim_keys:
            low = torch.cat([obs[k].flatten(0, 1) for k in self.lowdim_keys], dim=-1)  # (B*To, ΣD)
            per_frame.append(self.lowdim_net(low))
        feat = torch.cat(per_frame, dim=-1)  # (B*To, Dc / To)
        return feat.reshape(b, -1)  # (B, To * Dc / To)

    def _check(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Validate keys, shapes and dtypes; return the batch size."""
        missing = [k for k in self.obs_shapes if k not in obs]
        unknown = sorted(k for k in obs if k not in self.obs_shapes)
        if missing or unknown:
            raise LfmPolicyError(f"ObsEncoder: missing observation key(s) {missing}, unknown key(s) "
                                 f"{unknown}; expected {sorted(self.obs_shapes)}")
        b = None
        for key, shape in self.obs_shapes.items():
            v = obs[key]
            if not isinstance(v, torch.Tensor) or tuple(v.shape[1:]) != (self.n_obs_steps, *shape):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise LfmPolicyError(f"ObsEncoder: observation {key!r} must have shape "
                                     f"(B, {self.n_obs_steps}, {', '.join(map(str, shape))}), got {got}")
            if not v.is_floating_point():
                raise LfmPolicyError(f"ObsEncoder: observation {key!r} must be a float tensor "
                                     f"(normalized; images in [0, 1]), got {v.dtype}")
            if b is None:
                b = v.shape[0]
            elif v.shape[0] != b:
                raise LfmPolicyError(f"ObsEncoder: observation {key!r} has batch size {v.shape[0]}, "
                                     f"others {b}")
        return b
