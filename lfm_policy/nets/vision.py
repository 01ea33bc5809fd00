"""Image pieces of the observation encoder: CNN backbones, spatial-softmax keypoints and crops.

torchvision is imported only when a ResNet-18 trunk is built, so importing this module stays cheap.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("resnet18", "small_cnn")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``channels // 16`` groups (at least 1), Diffusion Policy's BatchNorm replacement."""
    return nn.GroupNorm(max(1, channels // 16), channels)


def resnet18_trunk(in_channels: int = 3) -> tuple[nn.Module, int]:
    """ResNet-18 (random init, no download) with GroupNorm everywhere, without avgpool and fc.

    Args:
        in_channels: Image channels; a value other than 3 replaces the first convolution.

    Returns:
        (trunk, out_channels): trunk maps (N, C, H, W) → (N, 512, ⌈H/32⌉, ⌈W/32⌉).

    """
    import torchvision  # lazy: only image policies with this backbone need it

    net = torchvision.models.resnet18(weights=None, norm_layer=group_norm)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                          net.layer4)
    return trunk, 512


def small_cnn_trunk(in_channels: int, channels: tuple[int, ...]) -> tuple[nn.Module, int]:
    """Build a light conv stack for tests and CPU: 3×3 convs (stride 2 except the last) + GroupNorm + ReLU.

    Returns:
        (trunk, out_channels): trunk maps (N, C, H, W) → (N, channels[-1], H / 2^(len-1), ...).

    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c in enumerate(channels):
        stride = 2 if i < len(channels) - 1 else 1
        layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), group_norm(c), nn.ReLU(inplace=True)]
        c_in = c
    return nn.Sequential(*layers), channels[-1]


class SpatialSoftmax(nn.Module):
    """Keypoints as the softmax-weighted mean image coordinate of K learned feature maps.

    A 1×1 convolution turns the C input maps into K keypoint maps; each map's softmax over positions
    weights the normalized coordinates (x from −1 at the left to 1 at the right, y from −1 at the top
    to 1 at the bottom), so every keypoint lies in [−1, 1]².

    Args:
        in_channels: C of the feature maps.
        num_keypoints: K.

    """

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.to_keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat: (N, C, h, w) → keypoints (N, K, 2) as (x, y) in [−1, 1]."""
        _, _, h, w = feat.shape
        attn = torch.softmax(self.to_keypoints(feat).flatten(2), dim=-1)  # (N, K, h*w)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=attn.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        x = attn @ grid_x.reshape(-1, 1)  # (N, K, 1)
        y = attn @ grid_y.reshape(-1, 1)
        return torch.cat([x, y], dim=-1)


def crop_images(images: torch.Tensor, crop: tuple[int, int], *, random: bool,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop every image to ``crop``; a random window per image, or the center window.

    Args:
        images: (N, C, H, W).
        crop: (h, w) with h ≤ H and w ≤ W.
        random: Draw an independent window per image (training) instead of the center (inference).
        generator: CPU generator for the window offsets (default: torch's global RNG).

    Returns:
        (N, C, h, w).

    """
    n, c, height, width = images.shape
    ch, cw = crop
    if (ch, cw) == (height, width):
        return images
    if not random:
        top, left = (height - ch) // 2, (width - cw) // 2
        return images[:, :, top:top + ch, left:left + cw]
    top = torch.randint(0, height - ch + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, width - cw + 1, (n,), generator=generator).to(images.device)
    rows = top[:, None] + torch.arange(ch, device=images.device)  # (N, ch)
    cols = left[:, None] + torch.arange(cw, device=images.device)  # (N, cw)
    out = images.gather(2, rows[:, None, :, None].expand(n, c, ch, width))  # (N, C, ch, W)
    return out.gather(3, cols[:, None, None, :].expand(n, c, ch, cw))  # (N, C, ch, cw)


class ImageFeatureNet(nn.Module):
    """Backbone → spatial softmax → Linear (→ standardization): one camera image to a feature vector.

    Args:
        backbone: ``"resnet18"`` or ``"small_cnn"``.
        in_channels: Image channels.
        num_keypoints: Spatial-softmax keypoints K (2K features before the linear layer).
        feature_dim: Output size.
        small_cnn_channels: Channels of the ``small_cnn`` layers.
        feature_norm: Standardize each output feature over the batch (``BatchNorm1d`` without affine
            parameters; running statistics at inference). Keypoints of a fresh network hardly move
            between images (spread ~0.002 on the toy camera), and a flow-matching loss, whose gradient
            to the condition is mostly noise at first, shrinks them further instead of using them; with
            unit spread per feature the head sees the image from the first step (docs/visuomotor.md).

    """

    def __init__(self, backbone: str, in_channels: int, num_keypoints: int, feature_dim: int,
                 small_cnn_channels: tuple[int, ...], feature_norm: bool = True):
        super().__init__()
        if backbone == "resnet18":
            self.trunk, c = resnet18_trunk(in_channels)
        elif backbone == "small_cnn":
            self.trunk, c = small_cnn_trunk(in_channels, small_cnn_channels)
        else:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        self.keypoints = SpatialSoftmax(c, num_keypoints)
        self.proj = nn.Linear(2 * num_keypoints, feature_dim)
        self.norm = nn.BatchNorm1d(feature_dim, affine=False) if feature_norm else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) in [0, 1] → (N, feature_dim)."""
        feat = self.proj(self.keypoints(self.trunk(images)).flatten(1))  # (N, feature_dim)
        if self.training and feat.shape[0] == 1 and isinstance(self.norm, nn.BatchNorm1d):
            # one image has no batch statistics: use the running ones (as at inference)
            return nn.functional.batch_norm(feat, self.norm.running_mean, self.norm.running_var, training=False,
                                            eps=self.norm.eps)
        return self.norm(feat)
