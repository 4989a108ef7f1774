"""Observation encoders: a dict of normalised observations with a time axis -> one vector.

Low-dimensional keys are concatenated (sorted by name); each camera (sorted by name) has its own
image encoder; the features of all T observation steps are concatenated. The key order is part
of the checkpoint contract.

Images (uint8 H x W x C) are scaled to [0, 1] and cropped: a random crop per sample in training
(Diffusion Policy: 76 of 84), the centre crop in eval mode. Encoders:
- ``resnet18``: robomimic's ``VisualCore`` (ResNet-18 trunk, spatial-softmax keypoints, linear
  projection) with every BatchNorm replaced by GroupNorm, as Diffusion Policy does: BatchNorm's
  running statistics interact badly with the EMA of the weights;
- ``conv``: a small CNN for CPU speed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

IMAGE_ENCODERS = ("conv", "resnet18")


def random_crop(images: Tensor, size: int, training: bool) -> Tensor:
    """(N, C, H, W) -> (N, C, size, size): per-sample random offsets, or the centre."""
    n, _, height, width = images.shape
    if size > min(height, width):
        raise ValueError(f"crop size {size} is larger than the image ({height}x{width})")
    if not training:
        top, left = (height - size) // 2, (width - size) // 2
        return images[:, :, top : top + size, left : left + size]
    top = torch.randint(0, height - size + 1, (n,), device=images.device)
    left = torch.randint(0, width - size + 1, (n,), device=images.device)
    rows = (top[:, None] + torch.arange(size, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(size, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channels, rows, cols]


def replace_batchnorm_with_groupnorm(module: nn.Module, channels_per_group: int = 16) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = max(1, child.num_features // channels_per_group)
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            replace_batchnorm_with_groupnorm(child, channels_per_group)
    return module


def _resnet18(shape: tuple[int, int, int], feature_dim: int) -> nn.Module:
    from robomimic.models.obs_core import VisualCore

    core = VisualCore(
        input_shape=list(shape),
        backbone_class="ResNet18Conv",
        backbone_kwargs={"pretrained": False, "input_coord_conv": False},
        pool_class="SpatialSoftmax",
        pool_kwargs={"num_kp": 32},
        flatten=True,
        feature_dimension=feature_dim,
    )
    return replace_batchnorm_with_groupnorm(core)


def _small_conv(channels: int, feature_dim: int) -> nn.Module:
    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.ReLU()]

    return nn.Sequential(
        *stage(channels, 32),
        *stage(32, 64),
        *stage(64, 64),
        *stage(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, feature_dim),
    )


class ObservationEncoder(nn.Module):
    def __init__(
        self,
        low_dim_keys: Mapping[str, int],
        image_keys: Mapping[str, tuple[int, int, int]],
        obs_horizon: int,
        image_encoder: str = "conv",
        image_feature_dim: int = 64,
        crop_size: int | None = None,
    ) -> None:
        super().__init__()
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder {image_encoder!r} not in {IMAGE_ENCODERS}")
        if not low_dim_keys and not image_keys:
            raise ValueError("ObservationEncoder needs at least one observation key")
        self.low_dim_keys = dict(sorted(low_dim_keys.items()))
        self.image_keys = {k: tuple(v) for k, v in sorted(image_keys.items())}
        self.obs_horizon = obs_horizon
        self.crop_size = crop_size
        self.image_encoders = nn.ModuleDict()
        for key, (height, width, channels) in self.image_keys.items():
            size = crop_size or round(0.9 * min(height, width))
            if image_encoder == "resnet18":
                self.image_encoders[key] = _resnet18((channels, size, size), image_feature_dim)
            else:
                self.image_encoders[key] = _small_conv(channels, image_feature_dim)
        per_step = sum(self.low_dim_keys.values()) + image_feature_dim * len(self.image_keys)
        self.out_dim = per_step * obs_horizon

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        features = []
        for key, dim in self.low_dim_keys.items():
            features.append(self._checked(obs, key, (dim,)).float())
        for key, shape in self.image_keys.items():
            images = self._checked(obs, key, shape)
            batch, steps = images.shape[:2]
            x = images.reshape(batch * steps, *shape).permute(0, 3, 1, 2).float()
            if images.dtype == torch.uint8:
                x = x / 255.0
            size = self.crop_size or round(0.9 * min(shape[0], shape[1]))
            x = random_crop(x, size, self.training)
            features.append(self.image_encoders[key](x).reshape(batch, steps, -1))
        return torch.cat(features, dim=-1).flatten(1)

    def _checked(self, obs: Mapping[str, Tensor], key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in obs:
            expected_keys = sorted(self.low_dim_keys) + sorted(self.image_keys)
            raise KeyError(f"observation {key!r} missing; encoder expects {expected_keys}")
        value = obs[key]
        expected = (self.obs_horizon, *shape)
        if tuple(value.shape[1:]) != expected:
            dims = ", ".join(map(str, expected))
            raise ValueError(
                f"observation {key!r} has shape {tuple(value.shape)}; expected (B, {dims})"
            )
        return value
