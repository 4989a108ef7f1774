"""Time embeddings shared by the diffusion and flow denoisers."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalTimeEmbedding(nn.Module):
    """(B,) times -> (B, dim) sinusoids at geometrically spaced frequencies.

    Diffusion passes integer steps (0..999); flow callers pass t * 1000 for t in [0, 1], so one
    frequency range serves both.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def broadcast_time(timestep: Tensor | float | int, batch: int, device: torch.device) -> Tensor:
    """A scalar or (B,) timestep as a (B,) float tensor."""
    t = torch.as_tensor(timestep, device=device, dtype=torch.float32)
    return t.expand(batch) if t.ndim == 0 else t


def time_mlp(dim: int) -> nn.Sequential:
    """Sinusoidal embedding followed by a small MLP (as in DDPM's U-Net)."""
    return nn.Sequential(
        SinusoidalTimeEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
    )
