"""Replay buffers on torch tensors, with n-step returns computed at sampling time.

Storage is laid out as (time, env): each sub-env of a vector env writes one row per step, so
the next transition of an episode is always the next row of the same column, however episodes
of different sub-envs interleave. Each transition keeps two end flags, because a time limit is
not a failure:

- ``terminated``: the episode ended in a state without a future (success here); the target
  does not bootstrap past it;
- ``ended``: the episode ended for any reason (terminated or truncated by the time limit); the
  n-step sum stops there, but a truncated episode still bootstraps from its last next-state.

The n-step target of transition t is

    R = sum_{k<m} gamma^k r_{t+k},  bootstrap = gamma^m (1 - terminated_{t+m-1}) Q(s'_{t+m-1})

with m = n, or fewer where the episode ends (or the newest stored step is reached) first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """Transitions with n-step returns: ``discount`` already holds gamma^m (1 - terminated)."""

    obs: Tensor
    actions: Tensor
    returns: Tensor
    next_obs: Tensor
    discount: Tensor

    @staticmethod
    def cat(a: Batch, b: Batch) -> Batch:
        return Batch(*(torch.cat([x, y]) for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[Tensor, ...]:
        return (self.obs, self.actions, self.returns, self.next_obs, self.discount)

    def to(self, device: torch.device) -> Batch:
        """The batch on the learner's device (the buffers stay in host memory)."""
        return Batch(*(x.to(device) for x in self.as_tuple()))


class ReplayBuffer:
    """A ring buffer of ``capacity`` transitions from ``num_envs`` parallel episodes."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "ended")

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, num_envs: int = 1) -> None:
        if capacity < num_envs:
            raise ValueError(f"capacity {capacity} is smaller than num_envs {num_envs}")
        self.rows = capacity // num_envs
        self.num_envs = num_envs
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        shape = (self.rows, num_envs)
        self.obs = torch.zeros(*shape, obs_dim)
        self.actions = torch.zeros(*shape, action_dim)
        self.rewards = torch.zeros(shape)
        self.next_obs = torch.zeros(*shape, obs_dim)
        self.terminated = torch.zeros(shape, dtype=torch.bool)
        self.ended = torch.zeros(shape, dtype=torch.bool)
        self.cursor = 0  # next row to write
        self.filled = 0  # rows written so far (<= rows)

    def __len__(self) -> int:
        return self.filled * self.num_envs

    def add(
        self,
        obs: Tensor,
        actions: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        terminated: Tensor,
        truncated: Tensor,
    ) -> None:
        """One step of every sub-env: tensors of leading size ``num_envs``."""
        for name, value in (("obs", obs), ("next_obs", next_obs)):
            if not torch.isfinite(value).all():
                bad = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(dim=1)
                raise ValueError(
                    f"replay: non-finite values in {name} of sub-envs "
                    f"{bad.nonzero().flatten().tolist()}"
                )
        row = self.cursor
        self.obs[row] = obs
        self.actions[row] = actions
        self.rewards[row] = rewards
        self.next_obs[row] = next_obs
        self.terminated[row] = terminated.bool()
        self.ended[row] = terminated.bool() | truncated.bool()
        self.cursor = (row + 1) % self.rows
        self.filled = min(self.filled + 1, self.rows)

    def add_episode(
        self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, terminated: bool
    ) -> None:
        """A whole episode (T, ...) into a single-env buffer (demonstrations)."""
        if self.num_envs != 1:
            raise ValueError("add_episode needs a buffer with num_envs == 1")
        steps = obs.shape[0]
        for t in range(steps):
            last = t == steps - 1
            self.add(
                obs[t : t + 1],
                actions[t : t + 1],
                rewards[t : t + 1],
                next_obs[t : t + 1],
                torch.tensor([last and terminated]),
                torch.tensor([last and not terminated]),
            )

    def sample(self, batch_size: int, n_step: int, gamma: float) -> Batch:
        if self.filled == 0:
            raise ValueError("replay: cannot sample from an empty buffer")
        # rows counted back from the newest: age 0 is the newest row
        age = torch.randint(0, self.filled, (batch_size,))
        env = torch.randint(0, self.num_envs, (batch_size,))
        newest = (self.cursor - 1) % self.rows
        row = (newest - age) % self.rows
        return self._n_step(row, env, age, n_step, gamma)

    def _n_step(self, row: Tensor, env: Tensor, age: Tensor, n_step: int, gamma: float) -> Batch:
        returns = torch.zeros(row.shape[0])
        discount = torch.ones(row.shape[0])
        last = row.clone()  # the row whose next_obs the target bootstraps from
        open_ = torch.ones(row.shape[0], dtype=torch.bool)  # still summing rewards
        for k in range(n_step):
            r = (row + k) % self.rows
            take = open_ & (k <= age)  # never read past the newest stored row
            returns += torch.where(take, discount * self.rewards[r, env], 0.0)
            discount = torch.where(take, discount * gamma, discount)
            last = torch.where(take, r, last)
            open_ = take & ~self.ended[r, env]
        discount = discount * (~self.terminated[last, env]).float()
        return Batch(
            obs=self.obs[row, env],
            actions=self.actions[row, env],
            returns=returns,
            next_obs=self.next_obs[last, env],
            discount=discount,
        )

    # ---- saving with the run -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = {name: getattr(self, name)[: self.filled].clone() for name in self.FIELDS}
        state["cursor"] = torch.tensor(self.cursor)
        state["filled"] = torch.tensor(self.filled)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        filled = int(state["filled"])
        if filled > self.rows or state["obs"].shape[1:] != self.obs.shape[1:]:
            raise ValueError(
                f"replay state of shape {tuple(state['obs'].shape)} does not fit a buffer of "
                f"{self.rows} rows x {tuple(self.obs.shape[1:])}"
            )
        for name in self.FIELDS:
            getattr(self, name)[:filled] = state[name]
        self.filled = filled
        self.cursor = int(state["cursor"])

    def end_episodes(self) -> None:
        """Mark each sub-env's newest transition as an episode end (truncated, so it still
        bootstraps). A resumed run starts fresh episodes; without this, n-step sums would read
        on from the saved episodes into the new ones' rows."""
        if self.filled:
            self.ended[(self.cursor - 1) % self.rows] = True


def sample_mixed(
    online: ReplayBuffer,
    demos: ReplayBuffer | None,
    batch_size: int,
    demo_fraction: float,
    n_step: int,
    gamma: float,
) -> Batch:
    """``demo_fraction`` of the batch from the demonstrations, the rest from online data."""
    n_demo = round(batch_size * demo_fraction) if demos is not None and len(demos) else 0
    batch = online.sample(batch_size - n_demo, n_step, gamma)
    if n_demo:
        batch = Batch.cat(batch, demos.sample(n_demo, n_step, gamma))
    return batch
