"""Observation histories, one per episode of a batch: the input every chunk is planned from.

The execution schemes, the residual RL base and the DSRL noise base all keep them, for
episodes (sub-envs, server clients) that start and end at different times. A new episode's
history is filled with copies of its first observation, as training pads episode starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def obs_tensor(value: np.ndarray | Tensor) -> Tensor:
    """An observation as a tensor: images stay uint8 (the encoder scales them), the rest float32."""
    if isinstance(value, Tensor):
        return value
    return torch.as_tensor(value, dtype=torch.uint8 if value.dtype == np.uint8 else torch.float32)


class ObservationHistories:
    """The last ``horizon`` observations of each of ``batch_size`` independent episodes."""

    def __init__(self, horizon: int, batch_size: int) -> None:
        self.horizon = horizon
        self._rows: list[deque[dict[str, Tensor]]] = [
            deque(maxlen=horizon) for _ in range(batch_size)
        ]

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self, i: int) -> None:
        """Forget row ``i``'s episode: its next observation starts a new one."""
        self._rows[i].clear()

    def push(self, i: int, obs: dict[str, Tensor]) -> None:
        """Append row ``i``'s newest observation (no batch or time axis)."""
        history = self._rows[i]
        if not history:
            history.extend([obs] * self.horizon)
        else:
            history.append(obs)

    def stacked(self, rows: Sequence[int]) -> dict[str, Tensor]:
        """The histories of ``rows`` as a (len(rows), horizon, ...) observation batch."""
        keys = self._rows[rows[0]][0].keys()
        return {
            key: torch.stack([torch.stack([o[key] for o in self._rows[i]]) for i in rows])
            for key in keys
        }
