"""Temporal ensembling (ACT, Zhao et al. 2023): re-plan at every step and execute a weighted
average of every chunk's prediction for the current step.

The chunk planned ``i`` steps ago predicted the current step at index ``first + i``. Weights
are exp(-m k) with k = 0 for the oldest prediction, as in ACT (m = 0.01 by default), so older
plans dominate and the executed trajectory is smooth; a larger m follows new plans faster.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor

from robopolicy.inference.executor import Executor


class TemporalEnsembleExecutor(Executor):
    def __init__(
        self, policy, batch_size: int, discrete_dims: Sequence[int] = (), decay: float = 0.01
    ) -> None:
        super().__init__(policy, batch_size, discrete_dims)
        if decay < 0:
            raise ValueError(f"ensemble decay must be >= 0, got {decay}")
        self.decay = decay
        self.span = policy.pred_horizon - self.first_action_index  # chunks that reach "now"
        self.chunks: list[deque[Tensor]] = [deque(maxlen=self.span) for _ in range(batch_size)]

    def _reset_episode(self, i: int) -> None:
        self.chunks[i].clear()

    def _plan(self) -> Tensor:
        chunk = self._predict(range(self.batch_size))
        for i in range(self.batch_size):
            self.chunks[i].append(chunk[i])
        return torch.stack([self._ensemble(chunks) for chunks in self.chunks])

    def _ensemble(self, chunks: deque[Tensor]) -> Tensor:
        """Weighted mean of the predictions for now; ``chunks`` is oldest first."""
        n = len(chunks)
        predictions = torch.stack(
            [chunk[self.first_action_index + (n - 1 - k)] for k, chunk in enumerate(chunks)]
        )
        weights = torch.exp(-self.decay * torch.arange(n, dtype=predictions.dtype))
        return (weights[:, None] * predictions).sum(0) / weights.sum()
