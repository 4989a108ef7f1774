"""Normalisation statistics that travel with the weights.

A policy evaluated with statistics other than those it was trained with fails silently, so the
statistics are buffers of the model: saved in its state dict (and checkpoint), moved by
``.to()``, and checked whenever they are built or loaded, with errors that name the key.

Each key gets an affine map per feature (the last dimension), ``y = (x - offset) * scale``:

- ``"limits"`` (the default, as in Diffusion Policy): [min, max] -> [-1, 1], which suits the
  clipped [-1, 1] range that diffusion samplers produce;
- ``"gaussian"``: mean 0 and standard deviation 1.

A feature that barely varies (range, or std, below ``MIN_SPREAD``) gets scale 1 and offset its
centre, so it maps to about 0: dividing by its ~0 spread would blow float noise, or a slightly
different value at test time, up into huge inputs.

Buffers are named ``<key>__scale`` and ``<key>__offset`` (a buffer name cannot contain "."), so
the state dict is flat, holds plain tensors only (safetensors-compatible), and
``Normalizer.from_state_dict`` can rebuild the module from it without being told the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

MODES = ("limits", "gaussian")
MIN_SPREAD = 1e-4
"""Range ("limits") or std ("gaussian") below which a feature is treated as constant."""

_KEY = re.compile(r"[A-Za-z0-9_]+")
_PARTS = ("scale", "offset")


class Normalizer(nn.Module):
    """Per-key affine maps to about [-1, 1]; build one with ``fit`` or ``from_state_dict``.

    ``scale`` and ``offset`` map each key to a 1-D tensor with one entry per feature; both must
    name the same keys.
    """

    def __init__(self, scale: Mapping[str, Tensor], offset: Mapping[str, Tensor]) -> None:
        super().__init__()
        for key in [*scale, *(k for k in offset if k not in scale)]:
            if not _KEY.fullmatch(key):
                raise ValueError(f"normalizer key {key!r} may contain only letters, digits and '_'")
            for part, stats in zip(_PARTS, (scale, offset), strict=True):
                if key not in stats:
                    raise ValueError(f"normalizer statistics for {key!r} lack the {part}")
                value = torch.as_tensor(stats[key], dtype=torch.float32).detach().clone()
                self.register_buffer(f"{key}__{part}", value)
        self.validate()

    @classmethod
    def fit(
        cls,
        data: Mapping[str, Tensor | np.ndarray],
        mode: str | Mapping[str, str] = "limits",
    ) -> Normalizer:
        """Statistics of each array over all its leading dimensions; the last holds the features
        (so a scalar signal is (N, 1), as it must then be when normalised). ``mode`` is one of
        ``MODES`` for every key, or a mapping from key to mode where unlisted keys get
        ``"limits"``."""
        modes = _modes(data, mode)
        scale, offset = {}, {}
        for key, values in data.items():
            x = _as_features(key, values)
            if modes[key] == "limits":  # spread: the range; unit: what maps to a distance of 1
                low, high = x.amin(0), x.amax(0)
                spread, centre, unit = high - low, (high + low) / 2, (high - low) / 2
            else:
                std = x.std(0, correction=0)
                spread, centre, unit = std, x.mean(0), std
            flat = spread < MIN_SPREAD
            scale[key] = torch.where(flat, 1.0, 1.0 / torch.where(flat, 1.0, unit))
            offset[key] = centre
        return cls(scale, offset)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> Normalizer:
        """Rebuild from a flat state dict such as ``state_dict()`` or a safetensors file gives,
        validated: unknown entries, a key lacking its scale or offset, and missing, non-finite or
        zero statistics are ``ValueError``s naming the key."""
        stats: dict[str, dict[str, Tensor]] = {part: {} for part in _PARTS}
        for name, value in state.items():
            key, _, part = name.rpartition("__")
            if part not in stats or not key:
                raise ValueError(
                    f"unexpected normalizer entry {name!r}; entries are <key>__scale and "
                    "<key>__offset"
                )
            stats[part][key] = value
        return cls(stats["scale"], stats["offset"])

    @property
    def keys(self) -> list[str]:
        """Keys with statistics, sorted: safetensors files do not keep the order of fitting."""
        return sorted(n.removesuffix("__scale") for n in self._buffers if n.endswith("__scale"))

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the key unless every key has a 1-D scale and offset of
        equal size, all finite, and no zero scale (which would make ``unnormalize`` divide by 0).
        """
        for key in self.keys:
            scale, offset = self._stats(key)
            if scale.ndim != 1 or scale.shape != offset.shape:
                raise ValueError(
                    f"normalizer statistics for {key!r}: scale {tuple(scale.shape)} and offset "
                    f"{tuple(offset.shape)} must be 1-D and of equal size"
                )
            for part, value in zip(_PARTS, (scale, offset), strict=True):
                if not torch.isfinite(value).all():
                    raise ValueError(f"normalizer {part} for {key!r} is not finite: {value}")
            if (scale == 0).any():
                raise ValueError(f"normalizer scale for {key!r} has zeros: {scale}")

    def normalize(self, key: str, x: Tensor) -> Tensor:
        scale, offset = self._stats(key, x)
        return (x - offset) * scale

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        scale, offset = self._stats(key, x)
        return x / scale + offset

    def normalize_dict(self, data: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``normalize`` the keys that have statistics; others (images) pass through as they are."""
        keys = set(self.keys)
        return {k: self.normalize(k, v) if k in keys else v for k, v in data.items()}

    def unnormalize_dict(self, data: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``unnormalize`` the keys that have statistics; others pass through as they are."""
        keys = set(self.keys)
        return {k: self.unnormalize(k, v) if k in keys else v for k, v in data.items()}

    def _stats(self, key: str, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(scale, offset)`` of ``key``, checked against the feature size of ``x`` if given, so
        that a mismatch names the key instead of failing to broadcast (or broadcasting wrongly)."""
        scale = self._buffers.get(f"{key}__scale")
        offset = self._buffers.get(f"{key}__offset")
        if scale is None or offset is None:
            raise KeyError(f"no normalizer statistics for {key!r}; have {self.keys}")
        if x is not None and (x.ndim == 0 or x.shape[-1] != scale.shape[0]):
            raise ValueError(
                f"{key!r} has shape {tuple(x.shape)}, but its normalizer statistics are for "
                f"{scale.shape[0]} features in the last dimension"
            )
        return scale, offset


def _modes(data: Mapping[str, object], mode: str | Mapping[str, str]) -> dict[str, str]:
    modes = {k: mode for k in data} if isinstance(mode, str) else {k: "limits" for k in data}
    if not isinstance(mode, str):
        unknown = sorted(set(mode) - set(data))
        if unknown:
            raise ValueError(f"normalizer modes given for {unknown}, which have no data")
        modes.update(mode)
    for key, key_mode in modes.items():
        if key_mode not in MODES:
            raise ValueError(f"normalizer mode {key_mode!r} for {key!r} is not one of {MODES}")
    return modes


def _as_features(key: str, values: Tensor | np.ndarray) -> Tensor:
    """``values`` as a float64 (samples, features) matrix, checked."""
    x = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(
            f"normalizer data for {key!r} has shape {tuple(x.shape)}; need a non-empty "
            "(..., features) array"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"normalizer data for {key!r} contains NaN or infinite values")
    return x.reshape(-1, x.shape[-1])
