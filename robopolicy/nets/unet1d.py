"""Conditional 1-D temporal U-Net: Diffusion Policy's denoiser (Chi et al. 2023).

The action chunk (B, H, A) is read as A channels over H time steps, so convolutions smooth
along the horizon and the output chunk stays temporally coherent. The global conditioning
vector (time embedding ++ observation features) modulates every residual block through FiLM
rather than entering as extra channels: one vector conditions all H steps alike.

Levels: each encoder level runs two residual blocks and halves H with a strided conv (but the
last); two middle blocks; each decoder level joins the encoder output of its resolution (skip
connection), runs two residual blocks and doubles H with a transposed conv. H must therefore be
divisible by 2 ** (len(down_dims) - 1): 4 for the default three levels (H = 8 and 16 work).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robopolicy.nets.embeddings import broadcast_time, time_mlp


def conv_block(channels_in: int, channels_out: int, kernel_size: int, groups: int) -> nn.Sequential:
    """Conv1d (length-preserving) -> GroupNorm -> Mish.

    GroupNorm rather than BatchNorm: statistics must not depend on the batch, which mixes noise
    levels and, at inference, holds a single sample.
    """
    return nn.Sequential(
        nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(groups, channels_out),
        nn.Mish(),
    )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; FiLM from the conditioning vector between them; a residual path.

    FiLM applies ``h * (1 + scale) + bias`` so that a zero prediction is the identity, which
    keeps early training close to an unconditioned residual network.
    """

    def __init__(
        self, channels_in: int, channels_out: int, cond_dim: int, kernel_size: int, groups: int
    ) -> None:
        super().__init__()
        self.conv1 = conv_block(channels_in, channels_out, kernel_size, groups)
        self.conv2 = conv_block(channels_out, channels_out, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels_out))
        # A 1x1 conv only where the channel count changes; otherwise the plain identity.
        self.residual: nn.Module = (
            nn.Conv1d(channels_in, channels_out, 1)
            if channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, C_in, H), cond (B, cond_dim) -> (B, C_out, H)."""
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv1(x) * (1 + scale) + bias
        return self.conv2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """``forward(sample (B, H, A), timestep (B,) or scalar, cond (B, cond_dim)) -> (B, H, A)``.

    ``timestep`` is a diffusion step or ``t * 1000`` for flow (see ``embeddings``). Raises a
    ``ValueError`` naming H when H is not divisible by 2 ** (len(down_dims) - 1).
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
        if not down_dims:
            raise ValueError("down_dims needs at least one level")
        if any(width % n_groups for width in down_dims):
            raise ValueError(f"every down_dims entry must be divisible by n_groups={n_groups}")
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        self.horizon_multiple = 2 ** (len(down_dims) - 1)
        self.time_embedding = time_mlp(time_embed_dim)
        film_dim = time_embed_dim + cond_dim

        def block(channels_in: int, channels_out: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(channels_in, channels_out, film_dim, kernel_size, n_groups)

        widths = [action_dim, *down_dims]
        levels = list(zip(widths[:-1], widths[1:], strict=True))
        self.encoder = nn.ModuleList()
        for i, (width_in, width) in enumerate(levels):
            is_last = i == len(levels) - 1
            downsample = nn.Identity() if is_last else nn.Conv1d(width, width, 3, 2, padding=1)
            self.encoder.append(
                nn.ModuleList([block(width_in, width), block(width, width), downsample])
            )
        self.middle = nn.ModuleList([block(widths[-1], widths[-1]) for _ in range(2)])
        # Decoder level i sees its own output concatenated with the encoder output of the same
        # resolution, and ends one level up (width_out) at twice the length.
        self.decoder = nn.ModuleList()
        for width_out, width in reversed(levels[1:]):
            upsample = nn.ConvTranspose1d(width_out, width_out, 4, 2, padding=1)
            self.decoder.append(
                nn.ModuleList([block(2 * width, width_out), block(width_out, width_out), upsample])
            )
        self.head = nn.Sequential(
            conv_block(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, sample: Tensor, timestep: Tensor | float | int, cond: Tensor) -> Tensor:
        """Predict noise / velocity / clean actions (whatever the objective trains) for a chunk."""
        self._check_inputs(sample, cond)
        t = broadcast_time(timestep, sample.shape[0], sample.device)
        film = torch.cat([self.time_embedding(t), cond], dim=-1)
        x = sample.transpose(1, 2)
        skips = []
        for first, second, downsample in self.encoder:
            x = second(first(x, film), film)
            skips.append(x)
            x = downsample(x)
        for block in self.middle:
            x = block(x, film)
        # The finest encoder output is not joined: the head works on the decoder output at
        # full length, as in Diffusion Policy.
        for first, second, upsample in self.decoder:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(second(first(x, film), film))
        return self.head(x).transpose(1, 2)

    def _check_inputs(self, sample: Tensor, cond: Tensor) -> None:
        if sample.ndim != 3 or sample.shape[2] != self.action_dim:
            raise ValueError(
                f"sample must have shape (B, H, {self.action_dim}), got {tuple(sample.shape)}"
            )
        horizon = sample.shape[1]
        if horizon % self.horizon_multiple:
            raise ValueError(
                f"horizon H={horizon} is not divisible by {self.horizon_multiple} "
                f"(2 ** (len(down_dims) - 1)); the U-Net halves H at every level but the last"
            )
        if cond.shape != (sample.shape[0], self.cond_dim):
            raise ValueError(
                f"cond must have shape ({sample.shape[0]}, {self.cond_dim}), "
                f"got {tuple(cond.shape)}"
            )
