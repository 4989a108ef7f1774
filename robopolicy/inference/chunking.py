"""Chunked execution: plan a chunk, execute ``action_horizon`` of its actions, re-plan.

One ``ChunkExecutor`` serves a batch of independent episodes (the sub-envs of a vector env):
each keeps its own observation history and action queue, so episodes may start and end at
different times, and only the episodes whose queue ran dry are re-planned, together in one
batched ``predict_chunk`` call::

    control step   t-1   t    t+1  ...  t+7  t+8
    observations   o    o                    (o o)   <- the last obs_horizon observations
    chunk          [a_t a_t+1 ... a_t+7 | a_t+8 ... ]  predicted at t from (o_t-1, o_t)
    executed            a_t  a_t+1 ... a_t+7             action_horizon actions, then re-plan

Chunk index ``obs_horizon - 1`` is aligned with the newest observation, as in the training
windows (which start at the oldest observation of the history). A new episode's history is
filled with copies of its first observation, as training pads episode starts.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor


class ChunkExecutor:
    def __init__(self, policy, batch_size: int) -> None:
        self.policy = policy
        self.batch_size = batch_size
        self.histories: list[deque[dict[str, Tensor]]] = [
            deque(maxlen=policy.obs_horizon) for _ in range(batch_size)
        ]
        self.queues: list[deque[Tensor]] = [deque() for _ in range(batch_size)]
        self.network_calls = 0  # predict_chunk calls (each a full sampler run)

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes where ``mask`` is True (everywhere when None)."""
        for i in range(self.batch_size):
            if mask is None or mask[i]:
                self.histories[i].clear()
                self.queues[i].clear()

    def act(self, obs: dict[str, Tensor]) -> Tensor:
        """Actions (B, A) for observations (B, ...) without a time axis."""
        for i, history in enumerate(self.histories):
            current = {k: v[i] for k, v in obs.items()}
            if not history:
                history.extend([current] * self.policy.obs_horizon)
            else:
                history.append(current)
        need = [i for i, queue in enumerate(self.queues) if not queue]
        if need:
            stacked = {
                key: torch.stack([torch.stack([o[key] for o in self.histories[i]]) for i in need])
                for key in obs
            }
            chunk = self.policy.predict_chunk(stacked)
            self.network_calls += 1
            start = self.policy.obs_horizon - 1
            for row, i in enumerate(need):
                self.queues[i].extend(chunk[row, start : start + self.policy.action_horizon])
        return torch.stack([queue.popleft() for queue in self.queues])
