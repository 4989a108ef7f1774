"""Observation encoders: a dict of normalised observations with a time axis -> one vector.

Layout of the output (part of the checkpoint contract, so it must not change): for each of the
T observation steps, the low-dimensional keys in sorted key order, then the image features of
each camera in sorted key order; the T per-step vectors are concatenated oldest first.

Images, (B, T, H, W, C) uint8 (or float in [0, 1]), are scaled to [0, 1], made channels-first
and cropped to a square: a random crop per sample in training (Diffusion Policy: 76 of 84,
a cheap shift augmentation), the centre crop in eval mode, so evaluation is deterministic.
Image encoders:

- ``resnet18``: robomimic's ``VisualCore`` (ResNet-18 trunk, spatial-softmax keypoints, linear
  projection) with every BatchNorm replaced by GroupNorm, as Diffusion Policy does: BatchNorm's
  running statistics interact badly with the EMA of the weights;
- ``conv``: a small CNN, fast enough to train on a CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

IMAGE_ENCODERS = ("conv", "resnet18")
CROP_FRACTION = 0.9  # Diffusion Policy's 76 of 84
GROUPNORM_CHANNELS_PER_GROUP = 16
RESNET_STRIDE = 32  # ResNet-18's trunk: input pixels per feature-map cell along each side


def random_crop(images: Tensor, size: int, training: bool) -> Tensor:
    """(N, C, H, W) -> (N, C, size, size): each sample its own random offset, or the centre.

    Loop-free: one advanced-indexing gather with per-sample row and column indices.
    """
    n, channels, height, width = images.shape
    if size > min(height, width):
        raise ValueError(f"crop size {size} is larger than the image ({height}x{width})")
    if not training:
        top, left = (height - size) // 2, (width - size) // 2
        return images[:, :, top : top + size, left : left + size]
    device = images.device
    offsets = torch.arange(size, device=device)
    top = torch.randint(0, height - size + 1, (n, 1), device=device)
    left = torch.randint(0, width - size + 1, (n, 1), device=device)
    rows = (top + offsets)[:, None, :, None]
    cols = (left + offsets)[:, None, None, :]
    samples = torch.arange(n, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return images[samples, channel_index, rows, cols]


def replace_batchnorm_with_groupnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d (recursively, in place) for GroupNorm with 16 channels per group."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = max(1, child.num_features // GROUPNORM_CHANNELS_PER_GROUP)
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            replace_batchnorm_with_groupnorm(child)
    return module


def resnet18_encoder(shape: tuple[int, int, int], feature_dim: int) -> nn.Module:
    """robomimic VisualCore for (C, H, W) inputs: ResNet-18, 32 spatial-softmax keypoints,
    linear to ``feature_dim``; untrained weights (nothing can be downloaded), GroupNorm."""
    from robomimic.models.obs_core import VisualCore  # heavy import, only when asked for

    with warnings.catch_warnings():
        # robomimic calls torchvision's resnet18(pretrained=False), deprecated but harmless.
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
        core = VisualCore(
            input_shape=list(shape),
            backbone_class="ResNet18Conv",
            backbone_kwargs={"pretrained": False, "input_coord_conv": False},
            pool_class="SpatialSoftmax",
            pool_kwargs={"num_kp": 32},
            flatten=True,
            feature_dimension=feature_dim,
        )
    _, height, width = core.backbone.output_shape(list(shape))
    if height * width == 1:
        # Spatial softmax over one cell returns a constant: the image would be ignored.
        raise ValueError(
            f"resnet18 needs a crop larger than {RESNET_STRIDE} pixels per side (the trunk "
            f"downsamples {RESNET_STRIDE}x and spatial softmax needs a feature map larger than "
            f"1x1), got {shape[1]}x{shape[2]}"
        )
    # VisualCore registers its trunk and pool twice (as ``backbone``/``pool`` and inside
    # ``nets``), so its state dict names each tensor twice and safetensors refuses to save it.
    # ``nets`` is the whole forward pass (trunk, pool, flatten, linear): keep only that.
    return replace_batchnorm_with_groupnorm(core.nets)


def conv_encoder(channels: int, feature_dim: int) -> nn.Sequential:
    """Four stride-2 3x3 convs (GroupNorm, ReLU), global average pool, linear to
    ``feature_dim``: a small fraction of ResNet-18's compute, for CPU training."""
    widths = [channels, 32, 64, 64, 128]
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [
            nn.Conv2d(width_in, width_out, 3, stride=2, padding=1),
            nn.GroupNorm(8, width_out),
            nn.ReLU(),
        ]
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], feature_dim)
    )


class ObservationEncoder(nn.Module):
    """Encode ``{key: (B, T, ...)}`` observations to (B, out_dim); see the module docstring.

    Low-dim observations are used as given (the caller normalises them). Each camera has its
    own image encoder unless ``share_image_encoder``, which requires all cameras to have the
    same shape. ``crop_size`` defaults to round(0.9 * min(H, W)).
    """

    def __init__(
        self,
        low_dim_keys: Mapping[str, int],
        image_keys: Mapping[str, tuple[int, int, int]],
        obs_horizon: int,
        image_encoder: str = "resnet18",
        image_feature_dim: int = 64,
        crop_size: int | None = None,
        share_image_encoder: bool = False,
    ) -> None:
        super().__init__()
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder {image_encoder!r} not in {IMAGE_ENCODERS}")
        if not low_dim_keys and not image_keys:
            raise ValueError("ObservationEncoder needs at least one observation key")
        if obs_horizon < 1:
            raise ValueError(f"obs_horizon must be >= 1, got {obs_horizon}")
        self.low_dim_keys = {key: int(dim) for key, dim in sorted(low_dim_keys.items())}
        self.image_keys = {key: tuple(shape) for key, shape in sorted(image_keys.items())}
        self.obs_horizon = obs_horizon
        self.image_feature_dim = image_feature_dim
        self.share_image_encoder = share_image_encoder
        if share_image_encoder and len(set(self.image_keys.values())) > 1:
            raise ValueError(f"a shared image encoder needs equal camera shapes, got {image_keys}")
        self.crop_sizes = {
            key: crop_size or round(CROP_FRACTION * min(height, width))
            for key, (height, width, _) in self.image_keys.items()
        }
        for key, (height, width, _) in self.image_keys.items():
            if self.crop_sizes[key] > min(height, width):
                raise ValueError(
                    f"crop size {self.crop_sizes[key]} exceeds camera {key!r} {height}x{width}"
                )
        # One entry per camera, or a single "shared" entry (all cameras have one shape then).
        cameras = list(self.image_keys)[:1] if share_image_encoder else list(self.image_keys)
        self.image_encoders = nn.ModuleDict()
        for key in cameras:
            name = "shared" if share_image_encoder else key
            channels = self.image_keys[key][2]
            if image_encoder == "resnet18":
                shape = (channels, self.crop_sizes[key], self.crop_sizes[key])
                self.image_encoders[name] = resnet18_encoder(shape, image_feature_dim)
            else:
                self.image_encoders[name] = conv_encoder(channels, image_feature_dim)

    @property
    def out_dim(self) -> int:
        """Features per sample: T * (sum of low dims + cameras * image_feature_dim)."""
        per_step = sum(self.low_dim_keys.values()) + len(self.image_keys) * self.image_feature_dim
        return self.obs_horizon * per_step

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """``{key: (B, T, D) or (B, T, H, W, C)}`` -> (B, out_dim); extra keys are ignored."""
        features = [
            self._checked(obs, key, (dim,)).float() for key, dim in self.low_dim_keys.items()
        ]
        for key, shape in self.image_keys.items():
            images = self._checked(obs, key, shape)
            batch, steps = images.shape[:2]
            x = images.reshape(batch * steps, *shape).permute(0, 3, 1, 2)
            x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
            x = random_crop(x, self.crop_sizes[key], self.training)
            encoder = self.image_encoders["shared" if self.share_image_encoder else key]
            features.append(encoder(x).reshape(batch, steps, -1))
        return torch.cat(features, dim=-1).flatten(1)

    def _checked(self, obs: Mapping[str, Tensor], key: str, shape: tuple[int, ...]) -> Tensor:
        """``obs[key]`` after checking that it exists and is (B, T, *shape)."""
        expected = ", ".join(map(str, (self.obs_horizon, *shape)))
        if key not in obs:
            wanted = [*self.low_dim_keys, *self.image_keys]
            raise KeyError(
                f"observation {key!r} is missing (expected shape (B, {expected})); "
                f"the encoder needs {wanted}, got {sorted(obs)}"
            )
        value = obs[key]
        if tuple(value.shape[1:]) != (self.obs_horizon, *shape):
            raise ValueError(
                f"observation {key!r} has shape {tuple(value.shape)}; expected (B, {expected})"
            )
        return value
