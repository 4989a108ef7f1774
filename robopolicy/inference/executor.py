"""What every execution scheme shares: per-episode observation histories, discrete action
dimensions, and the count of network evaluations per executed action.

An executor serves a batch of independent episodes (the sub-envs of a vector env, or the
clients of a policy server): each keeps its own history (``history``), so episodes may start
and end at different times. Subclasses decide how observations become actions (``chunking``,
``ensemble``, ``rti``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from robopolicy.inference.history import ObservationHistories


def threshold_discrete(actions: Tensor, discrete_dims: Sequence[int]) -> Tensor:
    """Executed open/close commands are exactly -1 or +1 (0 counts as open)."""
    if not discrete_dims:
        return actions
    actions = actions.clone()
    dims = list(discrete_dims)
    actions[..., dims] = torch.where(actions[..., dims] > 0, 1.0, -1.0).to(actions)
    return actions


class Executor:
    """Base class: history bookkeeping; subclasses implement ``_plan``."""

    def __init__(self, policy, batch_size: int, discrete_dims: Sequence[int] = ()) -> None:
        bad = [d for d in discrete_dims if not 0 <= d < policy.action_dim]
        if bad:
            raise ValueError(
                f"discrete action dims {bad} out of range for action_dim {policy.action_dim}"
            )
        self.policy = policy
        self.batch_size = batch_size
        self.discrete_dims = tuple(discrete_dims)
        self.histories = ObservationHistories(policy.obs_horizon, batch_size)
        self.network_evaluations = 0  # denoiser passes, summed over batch rows
        self.actions_executed = 0  # summed over batch rows

    @property
    def evaluations_per_action(self) -> float:
        return self.network_evaluations / max(self.actions_executed, 1)

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes where ``mask`` is True (everywhere when None)."""
        for i in range(self.batch_size):
            if mask is None or mask[i]:
                self.histories.clear(i)
                self._reset_episode(i)

    def act(self, obs: dict[str, Tensor]) -> Tensor:
        """Actions (B, A) for observations (B, ...) without a time axis."""
        for i in range(self.batch_size):
            self.histories.push(i, {k: v[i] for k, v in obs.items()})
        actions = self._plan()
        self.actions_executed += self.batch_size
        return threshold_discrete(actions, self.discrete_dims)

    def _predict(self, rows: Sequence[int], **kwargs) -> Tensor:
        """``predict_chunk`` for ``rows``, counting its network evaluations."""
        chunk = self.policy.predict_chunk(self.histories.stacked(rows), **kwargs)
        per_row = self.policy.network_evaluations(kwargs.get("start_step"))
        self.network_evaluations += per_row * len(rows)
        return chunk

    @property
    def first_action_index(self) -> int:
        """Chunk index aligned with the newest observation (training windows start at the
        oldest observation of the history)."""
        return self.policy.obs_horizon - 1

    def _reset_episode(self, i: int) -> None:
        raise NotImplementedError

    def _plan(self) -> Tensor:
        raise NotImplementedError
