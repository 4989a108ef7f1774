"""Sub-trajectories for the trajectory diffusion model, and the transform into its space.

A row is ``[obs, arctanh(action), reward, done]``. Windows of ``length`` rows start every
``stride`` steps inside one episode and never cross its end; each episode also contributes the
window that ends at its last step, so terminal steps (a hopper falling) are always seen. Episodes
shorter than a window contribute nothing.

Actions live in [-1, 1], where a Gaussian diffusion model would waste its mass beyond the
bounds: they are clipped to +-0.999 and arctanh-transformed, and generated ones go back through
tanh. Every feature is then standardised with the dataset's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robopolicy.synth.offline_data import OfflineData

ACTION_CLIP = 0.999
MIN_STD = 1e-6


@dataclass(frozen=True)
class RowLayout:
    """Where each part sits in a row: obs [0, O), action [O, O + A), reward, done."""

    obs_dim: int
    action_dim: int

    @property
    def width(self) -> int:
        return self.obs_dim + self.action_dim + 2

    @property
    def actions(self) -> slice:
        return slice(self.obs_dim, self.obs_dim + self.action_dim)

    @property
    def reward(self) -> int:
        return self.obs_dim + self.action_dim

    @property
    def done(self) -> int:
        return self.obs_dim + self.action_dim + 1


def window_starts(episode_ends: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Start indices of all windows: every ``stride`` steps, plus each episode's last window."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got {length}, {stride}")
    starts: list[int] = []
    begin = 0
    for end in episode_ends:
        last = int(end) - length
        if last >= begin:
            episode_starts = list(range(begin, last + 1, stride))
            if episode_starts[-1] != last:
                episode_starts.append(last)
            starts += episode_starts
        begin = int(end)
    return np.asarray(starts, dtype=np.int64)


def dataset_rows(data: OfflineData) -> np.ndarray:
    """(N, width) raw rows: obs, arctanh(clipped action), reward, terminal flag."""
    pre_tanh = np.arctanh(np.clip(data.actions, -ACTION_CLIP, ACTION_CLIP))
    return np.concatenate(
        [data.obs, pre_tanh, data.rewards[:, None], data.terminals[:, None].astype(np.float32)],
        axis=1,
    ).astype(np.float32)


def make_windows(data: OfflineData, length: int, stride: int) -> np.ndarray:
    """(num_windows, length, width) raw windows; an error if no episode is long enough."""
    starts = window_starts(data.episode_ends, length, stride)
    if len(starts) == 0:
        longest = int(np.diff(np.concatenate([[0], data.episode_ends])).max())
        raise ValueError(
            f"no episode is as long as the window ({length} steps; the longest has {longest})"
        )
    rows = dataset_rows(data)
    return rows[starts[:, None] + np.arange(length)[None, :]]


class RowNormalizer(torch.nn.Module):
    """Standardises rows feature by feature; the statistics are saved with the model."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def fit(self, rows: Tensor) -> RowNormalizer:
        flat = rows.reshape(-1, rows.shape[-1])
        self.mean.copy_(flat.mean(dim=0))
        self.std.copy_(flat.std(dim=0).clamp_min(MIN_STD))
        return self

    def normalize(self, rows: Tensor) -> Tensor:
        return (rows - self.mean) / self.std

    def unnormalize(self, rows: Tensor) -> Tensor:
        return rows * self.std + self.mean


def rows_to_parts(rows: Tensor, layout: RowLayout) -> dict[str, Tensor]:
    """Raw (unnormalised) rows -> obs, tanh-squashed actions, rewards, done flags (> 0.5)."""
    return {
        "obs": rows[..., : layout.obs_dim],
        "actions": torch.tanh(rows[..., layout.actions]),
        "rewards": rows[..., layout.reward],
        "dones": rows[..., layout.done] > 0.5,
    }
