"""Conditional 1-D temporal U-Net (Diffusion Policy's denoiser).

The action chunk (B, H, A) is treated as A channels over H time steps. Every residual block
is modulated by FiLM: a per-channel scale and bias predicted from the global conditioning
vector (time embedding ++ observation features). Skip connections join encoder and decoder
levels; each level halves (encoder) or doubles (decoder) the time axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robopolicy.nets.embeddings import broadcast_time, time_mlp


def _conv_block(
    channels_in: int, channels_out: int, kernel_size: int, groups: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(groups, channels_out),
        nn.Mish(),
    )


class FiLMResidualBlock(nn.Module):
    def __init__(
        self, channels_in: int, channels_out: int, cond_dim: int, kernel_size: int, groups: int
    ):
        super().__init__()
        self.conv1 = _conv_block(channels_in, channels_out, kernel_size, groups)
        self.conv2 = _conv_block(channels_out, channels_out, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels_out))
        self.skip = (
            nn.Conv1d(channels_in, channels_out, 1)
            if channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(h * (1 + scale) + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """``forward(sample (B, H, A), timestep (B,) or scalar, cond (B, cond_dim)) -> (B, H, A)``.

    H must be divisible by 2 ** (len(down_dims) - 1) (one halving per level but the last).
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        time_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        self.levels = len(down_dims)
        self.time_embedding = time_mlp(time_embed_dim)
        film_dim = time_embed_dim + cond_dim
        dims = [action_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:], strict=True))

        def block(c_in: int, c_out: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(c_in, c_out, film_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            resample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out), resample]))
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):
            upsample = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in), upsample]))
        self.head = nn.Sequential(
            _conv_block(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, sample: Tensor, timestep: Tensor | float | int, cond: Tensor) -> Tensor:
        horizon = sample.shape[1]
        factor = 2 ** (self.levels - 1)
        if horizon % factor:
            raise ValueError(
                f"U-Net with {self.levels} levels needs a horizon divisible by {factor}, "
                f"got H={horizon}"
            )
        t = broadcast_time(timestep, sample.shape[0], sample.device)
        film = torch.cat([self.time_embedding(t), cond], dim=-1)
        x = sample.transpose(1, 2)
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, film), film)
            skips.append(x)
            x = downsample(x)
        for module in self.mid:
            x = module(x, film)
        for first, second, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(second(first(x, film), film))
        return self.head(x).transpose(1, 2)
