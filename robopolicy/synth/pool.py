"""Synthetic trajectories -> transitions, and a flat pool of transitions to sample batches from.

Row t of a trajectory gives (s_t, a_t, r_t, done_t) and its next state is row t + 1's
observation, so a trajectory of L rows holds L - 1 transitions, plus its last row where that
row is terminal (a terminal's next state is never used). A generated ``done`` (> 0.5) ends the
trajectory: rows after it are dropped rather than read as the continuation of a fallen hopper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robopolicy.rl.replay import Batch
from robopolicy.synth.trajectories import RowLayout, rows_to_parts


def to_transitions(raw_rows: Tensor, layout: RowLayout) -> dict[str, Tensor]:
    """(B, L, F) unnormalised trajectories -> flat transition tensors."""
    parts = rows_to_parts(raw_rows, layout)
    dones = parts["dones"]
    batch, length = dones.shape
    # keep row t if no earlier row is done, and it has a next row or is itself terminal
    done_before = torch.cumsum(dones.int(), dim=1) - dones.int() > 0
    has_next = torch.arange(length)[None, :] < length - 1
    keep = ~done_before & (has_next | dones)
    next_obs = torch.cat([parts["obs"][:, 1:], parts["obs"][:, -1:]], dim=1)
    return {
        "obs": parts["obs"][keep],
        "actions": parts["actions"][keep],
        "rewards": parts["rewards"][keep],
        "next_obs": next_obs[keep],
        "terminals": dones[keep],
    }


class TransitionPool:
    """Transitions without time structure (offline RL is one-step): sample uniformly."""

    def __init__(self, transitions: dict[str, Tensor]) -> None:
        n = transitions["obs"].shape[0]
        if n == 0:
            raise ValueError("a transition pool needs at least one transition")
        for name in ("obs", "actions", "rewards", "next_obs", "terminals"):
            if transitions[name].shape[0] != n:
                raise ValueError(f"{name} has {transitions[name].shape[0]} rows, obs has {n}")
            if name != "terminals" and not torch.isfinite(transitions[name]).all():
                raise ValueError(f"non-finite values in the pool's {name}")
        self.obs = transitions["obs"].float()
        self.actions = transitions["actions"].float()
        self.rewards = transitions["rewards"].float()
        self.next_obs = transitions["next_obs"].float()
        self.terminals = transitions["terminals"].bool()

    def __len__(self) -> int:
        return self.obs.shape[0]

    def sample(self, batch_size: int, gamma: float, generator=None) -> Batch:
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return Batch(
            obs=self.obs[idx],
            actions=self.actions[idx],
            returns=self.rewards[idx],
            next_obs=self.next_obs[idx],
            discount=gamma * (~self.terminals[idx]).float(),
        )


def sample_real_and_synthetic(
    real: TransitionPool,
    synthetic: TransitionPool | None,
    batch_size: int,
    synthetic_fraction: float,
    gamma: float,
) -> Batch:
    """PGD's batches: ``synthetic_fraction`` of each (240 of 256) from the synthetic pool."""
    n_synth = round(batch_size * synthetic_fraction) if synthetic is not None else 0
    batch = real.sample(batch_size - n_synth, gamma)
    if n_synth:
        batch = Batch.cat(batch, synthetic.sample(n_synth, gamma))
    return batch
