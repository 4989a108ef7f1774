"""Time embeddings shared by the diffusion and flow denoisers.

Both objectives feed the same networks, so the time input has one convention: diffusion passes
integer steps (0..999), flow callers pass ``t * 1000`` for continuous t in [0, 1]. One
frequency range then resolves both, and a backbone trained for one objective keeps its meaning
of "time" when reused for the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_PERIOD = 10_000.0  # the slowest sinusoid's period; covers the 0..1000 range with room


class SinusoidalTimeEmbedding(nn.Module):
    """(B,) float times -> (B, dim): sines then cosines at geometrically spaced frequencies.

    The fastest frequency is 1 rad per unit, so consecutive diffusion steps (and flow times
    1/1000 apart) map to clearly different vectors; the slowest keeps t = 0 and t = 1000 apart
    without wrapping around.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be even and >= 2, got {dim}")
        half = dim // 2
        exponents = torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        # Not persistent: derived from ``dim``, so checkpoints need not carry it.
        self.register_buffer("freqs", torch.exp(-math.log(MAX_PERIOD) * exponents), False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed a (B,) tensor of times (integer steps or ``t * 1000``)."""
        if t.ndim != 1:
            raise ValueError(f"times must have shape (B,), got {tuple(t.shape)}")
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def broadcast_time(timestep: Tensor | float | int, batch: int, device: torch.device) -> Tensor:
    """A scalar, (1,) or (B,) timestep as a (B,) float tensor.

    Samplers step the whole batch at one time, so they may pass a scalar; training draws one
    time per sample.
    """
    t = torch.as_tensor(timestep, device=device, dtype=torch.float32)
    if t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"timestep must be a scalar or have shape ({batch},), got {tuple(t.shape)}"
        )
    return t


def time_mlp(dim: int) -> nn.Sequential:
    """Sinusoidal embedding then Linear-Mish-Linear, so the network can reshape the features."""
    return nn.Sequential(
        SinusoidalTimeEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
    )
