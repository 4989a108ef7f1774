"""MLPs: a residual MLP denoiser (the fast backbone on a CPU) and a plain builder for critics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from robopolicy.nets.embeddings import broadcast_time, time_mlp


def mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    layer_norm: bool = False,
    activation: Callable[[], nn.Module] = nn.Mish,
) -> nn.Sequential:
    """Linear (-> LayerNorm) -> activation per hidden layer, then a linear output layer.

    ``layer_norm`` is there for RL critics, where LayerNorm after each hidden layer curbs
    value over-estimation; ``activation`` is a factory called once per layer.
    """
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers.append(nn.Linear(in_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class ResidualMLPBlock(nn.Module):
    """x + Linear(Mish(Linear(LayerNorm(x)))): pre-norm so the residual path stays unscaled."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.Mish(), nn.Linear(width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, width) -> (B, width)."""
        return x + self.body(x)


class MLPDenoiser(nn.Module):
    """Same interface as ``ConditionalUnet1D``, on the flattened (H * A) chunk.

    No temporal convolutions, so it is several times faster than the U-Net on a CPU; it also
    has no constraint on H, but is built for one fixed (horizon, action_dim).
    """

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
        self.horizon = horizon
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        self.time_embedding = time_mlp(time_embed_dim)
        self.input = nn.Linear(horizon * action_dim + time_embed_dim + cond_dim, hidden_dim)
        self.blocks = nn.Sequential(*[ResidualMLPBlock(hidden_dim) for _ in range(num_layers)])
        self.output = nn.Sequential(
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, horizon * action_dim)
        )

    def forward(self, sample: Tensor, timestep: Tensor | float | int, cond: Tensor) -> Tensor:
        """sample (B, H, A), timestep (B,) or scalar, cond (B, cond_dim) -> (B, H, A)."""
        batch = sample.shape[0]
        if sample.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"MLPDenoiser is built for chunks (B, {self.horizon}, {self.action_dim}), "
                f"got {tuple(sample.shape)}"
            )
        if cond.shape != (batch, self.cond_dim):
            raise ValueError(
                f"cond must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}"
            )
        t = broadcast_time(timestep, batch, sample.device)
        x = torch.cat([sample.flatten(1), self.time_embedding(t), cond], dim=-1)
        return self.output(self.blocks(self.input(x))).view_as(sample)
