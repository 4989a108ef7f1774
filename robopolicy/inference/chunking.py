"""Chunked execution: plan a chunk, execute ``action_horizon`` of its actions, re-plan.

Only the episodes whose queue ran dry are re-planned, together in one batched
``predict_chunk`` call::

    control step   t-1   t    t+1  ...  t+7  t+8
    observations   o    o                    (o o)   <- the last obs_horizon observations
    chunk          [a_t a_t+1 ... a_t+7 | a_t+8 ... ]  predicted at t from (o_t-1, o_t)
    executed            a_t  a_t+1 ... a_t+7             action_horizon actions, then re-plan

With ``action_horizon=1`` this is the closed-loop baseline that re-plans at every step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor

from robopolicy.inference.executor import Executor


class ChunkExecutor(Executor):
    def __init__(
        self,
        policy,
        batch_size: int,
        discrete_dims: Sequence[int] = (),
        action_horizon: int | None = None,
    ) -> None:
        super().__init__(policy, batch_size, discrete_dims)
        self.action_horizon = action_horizon or policy.action_horizon
        last = self.first_action_index + self.action_horizon
        if self.action_horizon < 1 or last > policy.pred_horizon:
            raise ValueError(
                f"action_horizon {self.action_horizon} does not fit the chunk: need "
                f"obs_horizon - 1 + action_horizon <= pred_horizon ({policy.pred_horizon})"
            )
        self.queues: list[deque[Tensor]] = [deque() for _ in range(batch_size)]

    def _reset_episode(self, i: int) -> None:
        self.queues[i].clear()

    def _plan(self) -> Tensor:
        need = [i for i, queue in enumerate(self.queues) if not queue]
        if need:
            chunk = self._predict(need)
            start = self.first_action_index
            for row, i in enumerate(need):
                self.queues[i].extend(chunk[row, start : start + self.action_horizon])
        return torch.stack([queue.popleft() for queue in self.queues])
