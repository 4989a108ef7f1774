"""MLPs: a residual MLP denoiser (the fast backbone on a CPU) and a plain builder for critics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robopolicy.nets.embeddings import broadcast_time, time_mlp


def mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    layer_norm: bool = False,
    activation: type[nn.Module] = nn.Mish,
) -> nn.Sequential:
    """Linear (-> LayerNorm) -> activation per hidden layer, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers.append(nn.Linear(in_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.Mish())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MLPDenoiser(nn.Module):
    """Same interface as ``ConditionalUnet1D``, on the flattened (H * A) chunk."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        hidden_dim: int = 512,
        num_layers: int = 4,
        time_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.time_embedding = time_mlp(time_embed_dim)
        self.inp = nn.Linear(horizon * action_dim + time_embed_dim + cond_dim, hidden_dim)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden_dim) for _ in range(num_layers)])
        self.out = nn.Sequential(
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, horizon * action_dim)
        )

    def forward(self, sample: Tensor, timestep: Tensor | float | int, cond: Tensor) -> Tensor:
        if sample.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"MLPDenoiser built for chunks ({self.horizon}, {self.action_dim}), got "
                f"{tuple(sample.shape[1:])}"
            )
        t = broadcast_time(timestep, sample.shape[0], sample.device)
        x = torch.cat([sample.flatten(1), self.time_embedding(t), cond], dim=-1)
        return self.out(self.blocks(self.inp(x))).view_as(sample)
